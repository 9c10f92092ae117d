"""The Gymnasium envs: reset/step semantics, malformed actions, termination, check_env."""

import json
from pathlib import Path

import gymnasium as gym
import pytest

import hero_gym
from _tau_common import needs_official
from hero_gym import TextMessage, ToolCall
from hero_gym.envs.tau_bench.env import TauAirlineEnv, TauRetailEnv
from hero_gym.envs.tau_bench.users import STOP


@pytest.fixture(params=["official", "generated"])
def retail(request):
    if request.param == "official":
        from _tau_common import HAVE_OFFICIAL, SKIP_REASON
        if not HAVE_OFFICIAL:
            pytest.skip(SKIP_REASON)
    return TauRetailEnv(data=request.param)


def test_registered_ids_make_our_classes():
    env = hero_gym.make("hero_gym/TauRetail-v0", data="generated")
    assert isinstance(env.unwrapped, TauRetailEnv)
    env2 = gym.make("hero_gym/TauAirline-v0", data="generated")
    assert isinstance(env2.unwrapped, TauAirlineEnv)
    assert env.unwrapped.max_turns == 30


def test_reset_semantics(retail):
    obs, info = retail.reset(seed=1, options={"task_index": 3})
    task = retail.task
    assert info["task_id"] == task.task_id and info["task_index"] == 3
    assert info["system_prompt"] == retail.dataset.policy and info["system_prompt"]
    assert len(info["tools"]) == 16 and info["turn"] == 0 and info["observation_role"] == "user"
    assert task.instruction not in obs and task.instruction not in json.dumps(info)
    assert obs.startswith("Hi")                               # the user's first message
    obs2, info2 = retail.reset(seed=1, options={"task_index": 3})
    assert obs2 == obs
    # without task_index: sampled from np_random, deterministic per seed, always in range
    n = len(retail.tasks())
    seen = set()
    for seed in range(300):
        _, inf = retail.reset(seed=seed)
        assert 0 <= inf["task_index"] < n
        seen.add(inf["task_index"])
    assert len(seen) > min(20, n // 2)
    a = [retail.reset(seed=s)[1]["task_index"] for s in range(5)]
    b = [retail.reset(seed=s)[1]["task_index"] for s in range(5)]
    assert a == b
    with pytest.raises(ValueError, match="out of range"):
        retail.reset(options={"task_index": n})
    with pytest.raises(ValueError, match="unknown split"):
        retail.reset(options={"split": "nope"})


@needs_official
def test_splits_and_options():
    env = TauRetailEnv(split="train", task_index=7, max_turns=5)
    _, info = env.reset(seed=0)
    assert info["task_id"] == "retail/train/7" and env.max_turns == 5
    _, info = env.reset(seed=0, options={"split": "dev", "task_index": 19})
    assert info["task_id"] == "retail/dev/19"
    air = TauAirlineEnv()
    _, info = air.reset(seed=0, options={"task_index": 49})
    assert info["task_id"] == "airline/test/49" and len(info["tools"]) == 14


def test_tool_step_and_message_step(retail):
    obs, info = retail.reset(seed=0, options={"task_index": 0})
    uid = retail.task.user_id
    o, r, term, trunc, inf = retail.step(ToolCall(name="get_user_details", arguments={"user_id": uid}))
    assert json.loads(o)["name"] and inf["observation_role"] == "tool" and r == 0.0 and not term
    o, r, term, trunc, inf = retail.step('<tool_call>{"name": "get_user_details", "arguments": {"user_id": "%s"}}</tool_call>' % uid)
    assert json.loads(o)["email"] and inf["parsed_action"]["name"] == "get_user_details"
    o, r, term, trunc, inf = retail.step("What is your email address?")
    rec = retail.db.users[uid]
    assert inf["observation_role"] == "user" and inf["parsed_action"] == {"message": "What is your email address?"}
    assert rec["email"] in o or (rec["address"]["zip"] in o and rec["name"]["last_name"] in o)
    assert inf["turn"] == 3


def test_malformed_actions_never_crash(retail):
    retail.reset(seed=0, options={"task_index": 1})
    bad = [
        '<tool_call>{"name": "get_order_details", "arguments": {</tool_call>',          # bad JSON
        ToolCall(name="delete_everything", arguments={}),                                 # unknown tool
        ToolCall(name="get_order_details", arguments={"order_id": 12345}),                # wrong type
        ToolCall(name="get_order_details", arguments={}),                                 # missing arg
        ToolCall(name="get_order_details", arguments={"order_id": "#W1", "x": 1}),        # extra arg
        ToolCall(name="modify_pending_order_items", arguments={"order_id": "#W1", "item_ids": "abc",
                                                               "new_item_ids": [], "payment_method_id": 1}),
        '<tool_call>{"name": "calculate", "arguments": {"expression": "' + "1+" * 50000 + '1"}}</tool_call>',
        ToolCall(name="get_user_details", arguments={"user_id": "x" * 1_000_000}),         # huge string
        '<tool_call>{"name": "think", "arguments": {"thought": "a"}}</tool_call><tool_call>{"name": "think", "arguments": {"thought": "b"}}</tool_call>',
    ]
    errors = 0
    for i, action in enumerate(bad):
        obs, r, term, trunc, info = retail.step(action)
        assert isinstance(obs, str) and r == 0.0 and not term
        assert info["turn"] == i + 1
        errors += info["action_error"] is not None or obs.startswith("Error")
    assert errors == len(bad)
    assert retail.db.changed() == {}


def test_transfer_terminates_with_reward_info(retail):
    retail.reset(seed=0, options={"task_index": 2})
    obs, r, term, trunc, info = retail.step(ToolCall(name="transfer_to_human_agents", arguments={"summary": "x"}))
    assert obs == "Transfer successful" and term and not trunc
    ri = info["reward_info"]
    assert set(ri) >= {"reward", "db_match", "outputs_match", "outputs", "r_actions", "r_outputs"}
    assert r == ri["reward"]
    with pytest.raises(RuntimeError):
        retail.step("hello")


def test_turn_budget_truncates_with_v1_zero_reward():
    env = TauRetailEnv(data="generated", max_turns=2)
    env.reset(seed=0, options={"task_index": 0})
    env.step(ToolCall(name="think", arguments={"thought": "a"}))
    obs, r, term, trunc, info = env.step(ToolCall(name="think", arguments={"thought": "b"}))
    assert trunc and not term and r == 0.0
    assert info["reward_info"]["truncated"] is True and "reward_if_graded" in info["reward_info"]


def test_reward_on_truncation_option_and_user_stop():
    env = TauRetailEnv(data="generated", max_turns=3, reward_on_truncation=True)
    env.reset(seed=0, options={"task_index": 0})
    for _ in range(3):
        obs, r, term, trunc, info = env.step(ToolCall(name="think", arguments={"thought": "a"}))
    assert trunc and info["reward_info"]["reward"] == r == 0.0   # nothing was done: graded 0 anyway

    class Quitter:
        def reset(self, task, ctx, seed=None):
            return "hi"

        def reply(self, msg):
            return STOP

    env = TauRetailEnv(data="generated", user=Quitter())
    env.reset(seed=0, options={"task_index": 0})
    obs, r, term, trunc, info = env.step(TextMessage("hello"))
    assert term and info["end_reason"] == "user_stop" and info["observation_role"] == "user"


def test_episode_db_is_private_and_reset_restores_it():
    a = TauRetailEnv(data="generated")
    b = TauRetailEnv(data="generated")
    assert a.dataset is b.dataset
    a.reset(seed=0, options={"task_index": 0})
    b.reset(seed=0, options={"task_index": 0})
    uid = a.task.user_id
    a.step(ToolCall(name="modify_user_address", arguments={
        "user_id": uid, "address1": "1 Main", "address2": "", "city": "X", "state": "TX", "country": "USA",
        "zip": "00000"}))
    assert a.db.users[uid]["address"]["city"] == "X"
    assert b.db.users[uid]["address"]["city"] != "X"
    assert a.dataset.tables["users"][uid]["address"]["city"] != "X"
    a.reset(seed=0, options={"task_index": 0})
    assert a.db.users[uid]["address"]["city"] != "X"


@pytest.mark.parametrize("cls", [TauRetailEnv, TauAirlineEnv])
@pytest.mark.parametrize("data", ["official", "generated"])
def test_check_env(cls, data):
    from _tau_common import HAVE_OFFICIAL, SKIP_REASON
    if data == "official" and not HAVE_OFFICIAL:
        pytest.skip(SKIP_REASON)
    hero_gym.check_env(cls(data=data))


def test_auto_uses_generated_data_only_when_no_folder_is_given(monkeypatch):
    monkeypatch.delenv("HERO_GYM_TAUBENCH_DIR", raising=False)
    env = TauAirlineEnv()
    assert env.dataset.source == "generated"
    _, info = env.reset(seed=0)
    assert info["data_source"] == "generated" and info["task_id"].startswith("gen-airline")
    assert info["data"]["source"] == "generated" and info["data"]["path"] is None
    assert info["data"]["fingerprint"] == TauAirlineEnv(data="generated").dataset.fingerprint()
    assert info["data"]["fingerprint"] != TauAirlineEnv(data="generated", gen_seed=1).dataset.fingerprint()
    with pytest.raises(FileNotFoundError, match="HERO_GYM_TAUBENCH_DIR"):
        TauAirlineEnv(data="official")


@pytest.mark.parametrize("how", ["data_dir", "env_var"])
def test_a_wrong_data_folder_is_an_error_naming_the_path(monkeypatch, tmp_path, how):
    wrong = tmp_path / "not-taubench"
    kwargs = {}
    if how == "data_dir":
        monkeypatch.delenv("HERO_GYM_TAUBENCH_DIR", raising=False)
        kwargs["data_dir"] = str(wrong)
    else:
        monkeypatch.setenv("HERO_GYM_TAUBENCH_DIR", str(wrong))
    for data in ("auto", "official"):
        with pytest.raises(FileNotFoundError, match=str(wrong)):
            TauRetailEnv(data=data, **kwargs)
    assert TauRetailEnv(data="generated", **kwargs).dataset.source == "generated"


@needs_official
def test_official_results_record_the_data_folder():
    from _tau_common import DATA_DIR
    _, info = TauRetailEnv(data_dir=DATA_DIR).reset(seed=0, options={"task_index": 0})
    assert info["data"]["source"] == "official"
    assert info["data"]["path"] == str(Path(DATA_DIR).resolve())
    assert len(info["data"]["fingerprint"]) == 16


def test_import_does_not_pull_torch():
    import subprocess
    import sys
    code = ("import sys, hero_gym.envs.tau_bench.env, hero_gym.envs.tau_bench.gold_expert; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_malformed_last_action_is_graded_like_any_other_truncated_step():
    env = TauRetailEnv(data="generated", max_turns=2, reward_on_truncation=True)
    env.reset(seed=0, options={"task_index": 0})
    env.step(ToolCall(name="think", arguments={"thought": "a"}))
    obs, r, term, trunc, info = env.step("<tool_call>{not json</tool_call>")
    assert trunc and not term and info["action_error"]["kind"] == "parse"
    assert info["end_reason"] == "max_turns" and info["reward_info"]["truncated"] is True
    assert r == info["reward_info"]["reward"] and info["success"] is (r == 1.0)


def test_success_is_reported_by_the_env():
    env = TauRetailEnv(data="generated")
    env.reset(seed=0, options={"task_index": 2})
    *_, info = env.step(ToolCall(name="transfer_to_human_agents", arguments={"summary": "x"}))
    assert info["success"] is (info["reward_info"]["reward"] == 1.0)
