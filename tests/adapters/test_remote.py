"""The Gymnasium client of the env server (hero_gym.remote)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("requests")

import hero_gym  # noqa: E402
from hero_gym import remote  # noqa: E402
from hero_gym.serve import start_server  # noqa: E402


@pytest.fixture(scope="module")
def url():
    with start_server("hero_gym/Lookup-v0") as handle:
        yield handle.url


def test_errors_match_the_in_process_env(url):
    env = remote.make(url)
    assert env.env_id == "hero_gym/Lookup-v0" and env.num_tasks() == 8 and env.allow_text_messages
    with pytest.raises(RuntimeError, match="reset"):
        env.step("hi")
    obs, info = env.reset(options={"task_index": 1})
    assert info["task_index"] == 1 and env.state()["step_count"] == 0
    env.step(hero_gym.ToolCall(name="answer", arguments={"code": "0"}))
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.step("again")
    with pytest.raises(remote.RemoteEnvError) as err:
        env.reset(options={"task_index": 50})
    assert err.value.status == 400 and "task_index" in err.value.message
    with pytest.raises(TypeError):
        env.step(42)
    env.close()
    with pytest.raises(RuntimeError):
        env.state()


def test_action_payloads():
    assert remote.action_payload("x") == {"text": "x"}
    assert remote.action_payload(hero_gym.TextMessage("m")) == {"message": "m"}
    assert remote.action_payload(hero_gym.ToolCall(name="a", arguments={"b": 1})) == \
        {"tool_call": {"name": "a", "arguments": {"b": 1}}}
