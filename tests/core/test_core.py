"""The MultiTurnEnv contract, exercised through the Lookup example env."""

import json

import pytest

import hero_gym
from hero_gym import TextMessage, ToolCall
from hero_gym.envs.example import LookupEnv


def hermes(name, **args):
    import json
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


@pytest.fixture
def env():
    e = LookupEnv(num_items=4)
    yield e
    e.close()


def test_reset_info_and_tools(env):
    obs, info = env.reset(seed=3, options={"task_index": 2})
    assert obs == "What is the code for cherry?"
    assert info["turn"] == 0 and info["max_turns"] == 6
    assert [t["function"]["name"] for t in info["tools"]] == ["lookup", "answer"]
    assert info["system_prompt"].startswith("You help users")
    assert info["task_id"] == "lookup-2"


def test_successful_episode(env):
    env.reset(options={"task_index": 0})
    obs, r, term, trunc, info = env.step(hermes("lookup", key="apple"))
    assert obs == env.table["apple"] and r == 0 and not term and not trunc
    assert info["parsed_action"] == {"name": "lookup", "arguments": {"key": "apple"}, "id": None}
    assert info["observation_role"] == "tool" and info["action_error"] is None
    obs, r, term, trunc, info = env.step(ToolCall(name="answer", arguments={"code": env.table["apple"]}))
    assert (r, term, trunc) == (1.0, True, False)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(hermes("lookup", key="apple"))


@pytest.mark.parametrize("action,kind", [
    ("<tool_call>{oops</tool_call>", "parse"),
    (hermes("delete_all"), "unknown_tool"),
    (hermes("lookup", item="apple"), "invalid_arguments"),
    (hermes("lookup", key=["a"]), "invalid_arguments"),
    (hermes("lookup", key="a") + hermes("answer", code="1"), "too_many_calls"),
    ("   ", "no_action"),
    ("x" * 1_000_000 + "<tool_call>{", "too_long"),   # over the reply cap: rejected unparsed
])
def test_malformed_actions_are_error_observations_that_cost_a_turn(env, action, kind):
    env.reset(options={"task_index": 1})
    obs, r, term, trunc, info = env.step(action)
    assert obs.startswith("Error: ")
    assert info["action_error"]["kind"] == kind
    assert info["turn"] == 1 and r == 0.0 and not term
    assert info["parsed_action"] is None


def test_plain_message_goes_to_user(env):
    env.reset(options={"task_index": 1})
    obs, *_, info = env.step("Hello! Which item?")
    assert info["observation_role"] == "user" and info["parsed_action"] == {"message": "Hello! Which item?"}
    obs, *_, info = env.step(TextMessage("hi"))
    assert "look up" in obs


def test_truncation_at_budget():
    env = LookupEnv(max_turns=3)
    env.reset(seed=0)
    flags = [env.step(hermes("lookup", key="apple"))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]


def test_text_messages_rejected_when_env_forbids_them():
    class NoText(LookupEnv):
        allow_text_messages = False

    env = NoText()
    env.reset(seed=0)
    obs, *_, info = env.step("hello")
    assert info["action_error"]["kind"] == "no_action"
    assert "lookup, answer" in obs


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="max_turns"):
        LookupEnv(max_turns=0)
    with pytest.raises(ValueError, match="Unknown parser"):
        LookupEnv(parser="nope")
    with pytest.raises(ValueError, match="render_mode"):
        LookupEnv(render_mode="rgb_array")


def test_render_ansi_transcript():
    env = LookupEnv(render_mode="ansi")
    env.reset(options={"task_index": 0})
    env.step(hermes("lookup", key="apple"))
    text = env.render()
    assert "[observation] What is the code for apple?" in text and "[action] <tool_call>" in text


def test_same_seed_same_task_and_make_wraps_gymnasium():
    env = hero_gym.make("hero_gym/Lookup-v0", num_items=8)
    first = [env.reset(seed=s)[0] for s in (5, 6, 5)]
    assert first[0] == first[2]
    assert isinstance(env.unwrapped, LookupEnv)
    env.close()


# ------------------------------------------------------------------ the contract across every env
def _lookup():
    return LookupEnv(num_items=4)


def _tau():
    from hero_gym.envs.tau_bench.env import TauRetailEnv
    return TauRetailEnv(data="generated")


def _webshop():
    from hero_gym.envs.webshop.env import WebShopEnv
    return WebShopEnv(num_products=200, split="test")


ENVS = {"lookup": _lookup, "tau": _tau, "webshop": _webshop}
_made: dict = {}


def _env(name):
    if name not in _made:
        _made[name] = ENVS[name]()
    return _made[name]


# (env, options, message fragments); every error must be one line naming what is valid
BAD_OPTIONS = [
    ("lookup", {"task_index": 4}, ["task_index 4 is out of range", "0..3"]),
    ("lookup", {"task_index": -1}, ["task_index -1 is out of range", "0..3"]),
    ("lookup", {"task_index": "3"}, ["task_index '3' is not an integer", "0..3"]),
    ("lookup", {"task_index": 2.7}, ["task_index 2.7 is not an integer", "0..3"]),
    ("lookup", {"task_index": True}, ["is not an integer", "0..3"]),
    ("lookup", {"split": "test"}, ["unknown reset option(s) 'split'", "valid options are 'task_index'"]),
    ("lookup", {"foo": 1}, ["unknown reset option(s) 'foo'", "'task_index'"]),
    ("lookup", [("task_index", 1)], ["reset options must be a dict"]),
    ("tau", {"task_index": 10**9}, ["out of range", "0..39 in split 'test'"]),
    ("tau", {"task_index": "3"}, ["not an integer", "0..39"]),
    ("tau", {"task_index": 2.7}, ["not an integer"]),
    ("tau", {"split": "dev"}, ["unknown split 'dev'", "'train', 'test'"]),
    ("tau", {"split": "train", "task_index": 200}, ["out of range", "0..199 in split 'train'"]),
    ("tau", {"seed": 1}, ["unknown reset option(s) 'seed'", "'split', 'task_index'"]),
    ("webshop", {"task_index": -2}, ["out of range", "in split 'test'"]),
    ("webshop", {"task_index": "0"}, ["not an integer"]),
    ("webshop", {"split": "validation"}, ["unknown split 'validation'", "'train'", "'eval'", "'test'"]),
    ("webshop", {"goal_id": 10**6}, ["goal_id 1000000 is out of range", "(catalog-wide)"]),
    ("webshop", {"goal_id": 1.5}, ["goal_id 1.5 is not an integer"]),
    ("webshop", {"page": 2}, ["unknown reset option(s) 'page'", "'goal_id', 'split', 'task_index'"]),
]


@pytest.mark.parametrize("name,options,fragments", BAD_OPTIONS, ids=[f"{n}-{o}" for n, o, _ in BAD_OPTIONS])
def test_bad_reset_options_give_one_line_errors(name, options, fragments):
    env = _env(name)
    with pytest.raises(ValueError) as err:
        env.reset(seed=0, options=options)
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg
    with pytest.raises(RuntimeError, match="reset"):   # a failed reset leaves no episode running
        env.step("hello")


@pytest.mark.parametrize("name", ENVS)
def test_numpy_integers_and_defaults_are_valid_task_indices(name):
    import numpy as np
    env = _env(name)
    _, info = env.reset(seed=0, options={"task_index": np.int64(1)})
    assert info["task_index"] == 1
    picked = {env.reset(seed=s)[1]["task_index"] for s in range(6)}
    assert all(0 <= i < env.num_tasks() for i in picked)


def _first_call(name, env):
    """A valid tool call for the env's current state."""
    if name == "lookup":
        return ToolCall(name="lookup", arguments={"key": "apple"})
    if name == "tau":
        return ToolCall(name="think", arguments={"thought": "plan"})
    return ToolCall(name="search", arguments={"query": "shampoo"})


@pytest.mark.parametrize("name", ENVS)
def test_dict_actions_are_tool_calls_in_every_env(name):
    env = _env(name)
    call = _first_call(name, env)
    results = []
    for action in (call, {"name": call.name, "arguments": call.arguments},
                   {"role": "assistant", "content": None,
                    "tool_calls": [{"function": {"name": call.name, "arguments": json.dumps(call.arguments)}}]}):
        env.reset(seed=0, options={"task_index": 0})
        obs, r, term, trunc, info = env.step(action)
        results.append((obs, info["parsed_action"]["name"], info["action_error"]))
    assert results[0] == results[1] == results[2]
    assert results[0][2] is None


@pytest.mark.parametrize("name", ENVS)
def test_message_dicts_are_messages_and_other_types_are_type_errors(name):
    env = _env(name)
    env.reset(seed=0, options={"task_index": 0})
    obs, r, term, trunc, info = env.step({"role": "assistant", "content": "Hello, which item?"})
    if env.allow_text_messages:
        assert info["parsed_action"] == {"message": "Hello, which item?"} and info["observation_role"] == "user"
    else:
        assert info["action_error"]["kind"] == "no_action"
    with pytest.raises(TypeError, match="an action must be a str, ToolCall, TextMessage or tool-call dict"):
        env.step(42)
    assert env.turn == 1   # the rejected action took no turn


@pytest.mark.parametrize("name", ENVS)
def test_step_after_end_or_close_raises_and_success_is_reported(name):
    env = ENVS[name]()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("hello")
    env.max_turns = 1
    env.reset(seed=0, options={"task_index": 0})
    obs, r, term, trunc, info = env.step(_first_call(name, env))
    assert trunc and not term and info["success"] is False
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.step("hello")
    env.reset(seed=0, options={"task_index": 0})
    env.close()
    with pytest.raises(RuntimeError, match="after close"):
        env.step("hello")


def test_success_comes_from_step_result_and_is_false_until_the_end(env):
    env.reset(options={"task_index": 0})
    info = env.step(ToolCall(name="lookup", arguments={"key": "apple"}))[-1]
    assert info["success"] is False
    info = env.step(ToolCall(name="answer", arguments={"code": env.table["apple"]}))[-1]
    assert info["success"] is True
    env.reset(options={"task_index": 0})
    info = env.step(ToolCall(name="answer", arguments={"code": "nope"}))[-1]
    assert info["success"] is False


class _Hooked(LookupEnv):
    """Exercises the extra-info and truncation hooks."""

    def _extra_info(self):
        return {"probe": self.turn, "page": "base"}

    def _step(self, action):
        result = super()._step(action)
        result.info["page"] = "from-step"
        return result

    def _on_truncation(self, result):
        result.reward, result.success = 0.5, True
        result.info["graded"] = True
        return result


def test_extra_info_on_every_step_and_truncation_hook_on_the_last():
    env = _Hooked(max_turns=2)
    _, info = env.reset(seed=0, options={"task_index": 0})
    assert info["probe"] == 0
    obs, r, term, trunc, info = env.step("<tool_call>{oops</tool_call>")      # an error step
    assert info["probe"] == 1 and info["page"] == "base" and info["action_error"]["kind"] == "parse"
    assert "graded" not in info and r == 0.0
    obs, r, term, trunc, info = env.step(ToolCall(name="lookup", arguments={"key": "apple"}))
    assert info["probe"] == 2 and info["page"] == "from-step"                # _step's keys win
    assert trunc and info["graded"] and r == 0.5 and info["success"] is True
    env.reset(seed=0, options={"task_index": 0})
    env.step("<tool_call>{oops</tool_call>")
    *_, trunc, info = env.step("<tool_call>{oops</tool_call>")               # the hook runs on error steps too
    assert trunc and info["graded"]


def test_no_shipped_env_overrides_step_or_reset():
    import importlib

    from hero_gym.core import MultiTurnEnv
    from hero_gym.envs import SHIPPED_ENVS
    for env_id, target in SHIPPED_ENVS.items():
        module, cls_name = target.split(":")
        cls = getattr(importlib.import_module(f"hero_gym.envs.{module}"), cls_name)
        assert issubclass(cls, MultiTurnEnv)
        assert cls.step is MultiTurnEnv.step and cls.reset is MultiTurnEnv.reset, env_id
