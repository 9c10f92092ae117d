"""TRL rollouts -> hero-gym episodes (:mod:`hero_gym.adapters.trl_episodes`): splitting by ``tool_mask`` and the
alignment of replies with the env steps the factory's instances record. No model needed."""

from __future__ import annotations

import pytest

from hero_gym.adapters.trl import environment_factory
from hero_gym.adapters.trl_episodes import NO_TOOL_CALL, TOOL_ERROR, action_spans, rollout_to_episode


def test_action_spans():
    assert action_spans([1, 1, 0, 0, 1, 0, 1, 1], 8) == [(0, 2), (4, 5), (6, 8)]
    assert action_spans([0, 1, 1], 3) == [(1, 3)]
    assert action_spans(None, 3) == [(0, 3)] and action_spans(None, 0) == []
    with pytest.raises(ValueError, match="3 entries for 4"):
        action_spans([1, 0, 1], 4)


def _assistant(*calls, content=""):
    msg = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
    return msg


def _tool(name, content):
    return {"role": "tool", "name": name, "content": content}


def _play(env, calls):
    """Run TRL's side of a rollout by hand: each call through the env instance's tool method, errors as TRL
    reports them (``{'error': ...}``)."""
    out = []
    for name, args in calls:
        try:
            out.append(str(getattr(env, name)(**args)))
        except Exception as e:  # noqa: BLE001 - TRL catches everything a tool raises
            out.append(str({"error": str(e)}))
    return out


def test_turns_follow_the_replies_and_env_steps():
    env = environment_factory("hero_gym/Lookup-v0")()
    env.reset(task_index=0)
    item = env.env.unwrapped._item
    code = env.env.unwrapped.table[item]
    # reply 0: a good lookup; reply 1: a wrong argument name (the env rejects it: one env step); reply 2: an unknown
    # tool (TRL's error: no env step); reply 3: the right answer (ends the episode); reply 4: a message after the end
    r0 = _play(env, [("lookup", {"key": item})])
    r1 = _play(env, [("lookup", {"item": item})])
    r2 = _play(env, [("fly", {})])
    r3 = _play(env, [("answer", {"code": code})])
    messages = [_assistant(("lookup", {"key": item})), _tool("lookup", r0[0]),
                _assistant(("lookup", {"item": item})), _tool("lookup", r1[0]),
                _assistant(("fly", {})), _tool("fly", r2[0]),
                _assistant(("answer", {"code": code})), _tool("answer", r3[0]),
                _assistant(content="Done.")]
    sizes = [3, 2, 2, 4, 2]            # reply lengths, with 5 spliced-in tool tokens after each of the first four
    mask = sum(([1] * n + [0] * 5 for n in sizes[:-1]), []) + [1] * sizes[-1]
    comp = list(range(100, 100 + len(mask)))
    lps = [-0.5] * len(comp)
    ep = rollout_to_episode(prompt_ids=[1, 2, 3], completion_ids=comp, tool_mask=mask, messages=messages,
                            decode=lambda ids: " ".join(map(str, ids)), env=env, logprobs=lps, env_id="lookup",
                            task_id="t0", initial_observation=env.observations[0])
    assert len(ep.turns) == 4                       # the reply after the end is not a turn
    starts = [0, 8, 15, 22]
    for turn, start, n in zip(ep.turns, starts, sizes):
        assert turn.context_token_ids == [1, 2, 3] + comp[:start] and turn.action_token_ids == comp[start:start + n]
    t0, t1, t2, t3 = ep.turns
    assert t0.action_logprobs == [-0.5] * 3
    assert t0.observation == r0[0] and t0.action_error is None and t0.tool_call.arguments == {"key": item}
    assert t1.action_error["kind"] == "invalid_arguments" and t1.observation == r1[0] == env.steps[1].observation
    assert t2.action_error["kind"] == TOOL_ERROR and "fly" in t2.observation and t2.parsed_action["name"] == "fly"
    assert t3.terminated and t3.reward == 1.0 and t3.info["success"] and not t2.terminated
    assert ep.success and ep.total_reward == 1.0 and ep.metadata["env_steps"] == 3 == len(env.steps)


def test_a_reply_without_a_tool_call_is_a_turn_error_while_the_episode_runs():
    env = environment_factory("hero_gym/Lookup-v0")()
    env.reset(task_index=1)
    obs = _play(env, [("lookup", {"key": "nope"})])
    messages = [_assistant(("lookup", {"key": "nope"})), _tool("lookup", obs[0]), _assistant(content="The code is?")]
    ep = rollout_to_episode(prompt_ids=[1], completion_ids=[5, 6, 7, 8], tool_mask=[1, 0, 0, 1], messages=messages,
                            decode=str, env=env)
    assert [t.action_error and t.action_error["kind"] for t in ep.turns] == [None, NO_TOOL_CALL]
    assert ep.turns[1].observation == "" and not ep.terminated and not ep.success
    assert ep.turns[1].action_logprobs is None


def test_mismatched_rollouts_are_refused():
    with pytest.raises(ValueError, match="2 runs of model tokens"):
        rollout_to_episode(prompt_ids=[1], completion_ids=[5, 6, 7], tool_mask=[1, 0, 1],
                           messages=[_assistant(content="x")], decode=str)
