"""The HTTP env server: concurrent sessions equal in-process play, 4xx on bad requests, timeouts, OpenEnv."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
requests = pytest.importorskip("requests")

import hero_gym  # noqa: E402
from hero_gym import remote  # noqa: E402
from hero_gym.serve import ActionIn, start_server  # noqa: E402

LOOKUP = "hero_gym/Lookup-v0"


def _json_roundtrip(x):
    return json.loads(json.dumps(x, default=str))


def _lookup_script(i: int):
    """A policy that reads its observations (so a wrong observation changes the actions)."""

    def policy(turn: int, obs: str):
        item = re.search(r"code for (\w+)", obs)
        if turn == 0:
            return ["hello?", 'lookup(key="nothing")', "<tool_call>{\"name\": \"lookup\"}</tool_call>"][i % 3]
        if turn == 1:
            return hero_gym.ToolCall(name="lookup", arguments={"key": policy.item})
        if turn == 2:
            code = obs.strip() if i % 4 else "000"
            return hero_gym.ToolCall(name="answer", arguments={"code": code})
        return hero_gym.TextMessage("more")

    return policy


def _play(env, seed: int, script) -> list:
    obs, info = env.reset(seed=seed)
    trace = [("reset", obs, _json_roundtrip(info))]
    script.item = re.search(r"code for (\w+)", obs).group(1)
    for turn in range(10):
        obs, reward, terminated, truncated, info = env.step(script(turn, obs))
        trace.append((obs, reward, terminated, truncated, _json_roundtrip(info)))
        if terminated or truncated:
            break
    return trace


@pytest.fixture(scope="module")
def lookup_server():
    with start_server(LOOKUP, max_sessions=40) as handle:
        yield handle


def test_default_host_is_loopback(lookup_server):
    assert lookup_server.url.startswith("http://127.0.0.1:")
    assert requests.get(lookup_server.url + "/health").json()["status"] == "healthy"


def test_32_concurrent_sessions_play_the_in_process_episodes(lookup_server):
    def remote_episode(i):
        env = remote.make(lookup_server.url)
        try:
            return [_play(env, seed=100 + i, script=_lookup_script(i)) for _ in range(2)]
        finally:
            env.close()

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(remote_episode, range(32)))
    for i in range(32):
        env = hero_gym.make(LOOKUP)
        want = [_play(env, seed=100 + i, script=_lookup_script(i)) for _ in range(2)]
        assert got[i] == want, f"session {i} differs"
    rewards = [t[-1][1] for g in got for t in g]
    assert 0 < sum(rewards) < len(rewards)          # the scripts both succeed and fail
    assert len(lookup_server.app.state.sessions) == 0


def test_tau_sessions_match_in_process():
    acts = [hero_gym.TextMessage("Hi, how can I help?"),
            hero_gym.ToolCall(name="find_user_id_by_email", arguments={"email": "noone@example.com"}),
            '<tool_call>{"name": "get_order_details", "arguments": {"order_id": 7}}</tool_call>',
            hero_gym.ToolCall(name="transfer_to_human_agents", arguments={"summary": "help"})]
    kwargs = {"data": "generated"}
    with start_server("hero_gym/TauRetail-v0", kwargs) as handle:
        def run(i):
            env = remote.make(handle.url)
            try:
                obs, info = env.reset(seed=i, options={"task_index": i})
                return [(obs, _json_roundtrip(info))] + [env.step(a) for a in acts]
            finally:
                env.close()

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(run, range(4)))
    for i in range(4):
        env = hero_gym.make("hero_gym/TauRetail-v0", **kwargs)
        obs, info = env.reset(seed=i, options={"task_index": i})
        want = [(obs, _json_roundtrip(info))] + [_json_roundtrip(env.step(a)) for a in acts]
        assert [got[i][0]] + [_json_roundtrip(list(s)) for s in got[i][1:]] == \
            [want[0]] + [list(s) for s in want[1:]]
        assert got[i][-1][2] is True and "reward_info" in got[i][-1][4]


def _post(url, data, **kw):
    return requests.post(url, data=data, headers={"content-type": "application/json"}, **kw)


def test_malformed_requests_get_4xx_with_a_message(lookup_server):
    url = lookup_server.url
    sid = requests.post(url + "/sessions", json={"seed": 0}).json()["session_id"]
    cases = [
        (_post(url + "/sessions", "{not json"), 400, "Malformed JSON"),
        (_post(url + f"/sessions/{sid}/step", '{"action": '), 400, "Malformed JSON"),
        (requests.post(url + "/sessions/nope/step", json={"action": {"text": "hi"}}), 404, "Unknown session"),
        (requests.post(url + "/sessions/nope/reset", json={}), 404, "Unknown session"),
        (requests.delete(url + "/sessions/nope"), 404, "Unknown session"),
        (requests.post(url + f"/sessions/{sid}/step", json={"action": {}}), 422, "exactly one of"),
        (requests.post(url + f"/sessions/{sid}/step", json={"action": {"text": "a", "message": "b"}}), 422,
         "exactly one of"),
        (requests.post(url + f"/sessions/{sid}/step", json={"act": {"text": "a"}}), 422, "does not match"),
        (requests.post(url + f"/sessions/{sid}/step", json={"action": {"code": "import os"}}), 422, "does not match"),
        (requests.post(url + f"/sessions/{sid}/reset", json={"seed": -1}), 422, "seed"),
        (requests.post(url + f"/sessions/{sid}/reset", json={"options": {"task_index": 99}}), 400, "task_index"),
        (requests.post(url + f"/sessions/{sid}/step", json={"action": {"text": "x" * 2_000_000}}), 413, "over"),
    ]
    for resp, status, text in cases:
        assert resp.status_code == status, (resp.status_code, resp.text[:200])
        assert text in resp.json()["detail"]
    # an ended episode: 409 until reset
    requests.post(url + f"/sessions/{sid}/step", json={"action": {"tool_call": {"name": "answer",
                                                                                  "arguments": {"code": "1"}}}})
    resp = requests.post(url + f"/sessions/{sid}/step", json={"action": {"message": "again"}})
    assert resp.status_code == 409 and "reset" in resp.json()["detail"]
    assert requests.delete(url + f"/sessions/{sid}").status_code == 204


def test_client_text_is_never_executed(lookup_server, tmp_path):
    marker = tmp_path / "pwned"
    env = remote.make(lookup_server.url)
    env.reset(seed=0)
    for text in [f"__import__('os').system('touch {marker}')", f'lookup(key=open("{marker}", "w"))',
                 f'<tool_call>{{"name": "__import__", "arguments": {{"name": "os"}}}}</tool_call>']:
        obs, *_ = env.step(text)
    assert not marker.exists()
    env.close()


def test_max_sessions_and_timeout():
    with start_server(LOOKUP, max_sessions=2, session_timeout=0.5) as handle:
        a, b = remote.make(handle.url), remote.make(handle.url)
        a.reset(seed=0)
        b.reset(seed=1)
        resp = requests.post(handle.url + "/sessions", json={})
        assert resp.status_code == 429 and "Too many sessions" in resp.json()["detail"]
        old = a.session_id
        time.sleep(1.0)
        c = remote.make(handle.url)
        c.reset(seed=2)                   # creating a session reaps the idle ones
        resp = requests.post(handle.url + f"/sessions/{old}/step", json={"action": {"message": "hi"}})
        assert resp.status_code == 404 and "expired" in resp.json()["detail"]
        obs, _ = a.reset(seed=0)           # the client opens a new session when its own expired
        assert a.session_id != old and obs.startswith("What is the code")
        for env in (a, b, c):
            env.close()


def test_action_schema_rejects_extra_fields():
    with pytest.raises(ValueError):
        ActionIn.model_validate({"text": "a", "shell": "ls"})
    assert ActionIn.model_validate({"message": "hi"}).to_env() == hero_gym.TextMessage("hi")


def test_openenv_client_connects_unmodified(lookup_server):
    openenv = pytest.importorskip("openenv.core")
    with openenv.GenericEnvClient(base_url=lookup_server.url).sync() as client:
        first = client.reset(seed=7)
        env = hero_gym.make(LOOKUP)
        obs, info = env.reset(seed=7)
        assert first.observation["text"] == obs and first.done is False
        item = re.search(r"code for (\w+)", obs).group(1)
        got = client.step({"tool_call": {"name": "lookup", "arguments": {"key": item}}})
        want = env.step(hero_gym.ToolCall(name="lookup", arguments={"key": item}))
        assert got.observation["text"] == want[0] and got.reward == want[1]
        got = client.step({"tool_call": {"name": "answer", "arguments": {"code": want[0]}}})
        assert got.reward == 1.0 and got.done is True and got.observation["terminated"] is True
        assert client.state()["step_count"] == 2
        with pytest.raises(RuntimeError, match="VALIDATION_ERROR"):
            client.step({"shell": "ls"})
        with pytest.raises(RuntimeError, match="reset the session"):
            client.step({"message": "hi"})
    schema = requests.get(lookup_server.url + "/schema").json()
    assert set(schema) == {"action", "observation", "state"}


def test_websocket_errors(lookup_server):
    from websockets.sync.client import connect

    with connect(lookup_server.url.replace("http", "ws") + "/ws") as ws:
        ws.send("{oops")
        assert json.loads(ws.recv())["data"]["code"] == "INVALID_JSON"
        ws.send(json.dumps({"type": "exec", "data": "rm -rf /"}))
        assert json.loads(ws.recv())["data"]["code"] == "UNKNOWN_TYPE"
        ws.send(json.dumps({"type": "reset", "data": {"seed": 1, "task_index": 2}}))
        reply = json.loads(ws.recv())
        assert reply["type"] == "observation" and reply["data"]["observation"]["info"]["task_index"] == 2


def test_cli_serve_help_defaults_to_loopback():
    from typer.testing import CliRunner

    from hero_gym.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"])
    assert out.exit_code == 0 and "127.0.0.1" in out.output
    assert Path(hero_gym.__file__).parent.joinpath("serve.py").exists()
