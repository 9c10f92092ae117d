"""The MultiTurnEnv contract, exercised through the Lookup example env."""

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
