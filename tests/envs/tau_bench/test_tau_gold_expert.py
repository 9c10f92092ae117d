"""The gold expert talking to the scripted user through the env: it solves >= 95% of the tasks, from the
start (play_gold) and from states a wrong policy reached (GoldExpert, the warm start's expert)."""

import random

import pytest

from _tau_common import needs_official
from hero_gym.envs.tau_bench.env import TauAirlineEnv, TauRetailEnv
from hero_gym.envs.tau_bench.gold_expert import GoldExpert, play_gold
from hero_gym.tools import ToolCall


def _run(env):
    results = [play_gold(env, seed=i, options={"task_index": i}) for i in range(len(env.tasks()))]
    fails = [(r["task_id"], r["end_reason"], r["turns"], r["reward_info"].get("mismatched_records"))
             for r in results if r["reward"] != 1.0]
    return results, fails


@needs_official
@pytest.mark.parametrize("cls", [TauRetailEnv, TauAirlineEnv])
def test_gold_agent_with_scripted_user_official(cls):
    env = cls(data="official", split="test")
    results, fails = _run(env)
    rate = 1 - len(fails) / len(results)
    assert rate >= 0.95, f"success {rate:.1%}; failures: {fails}"
    # the episodes really went through the user: it stopped by itself in (nearly) all of them
    assert sum(r["end_reason"] == "user_stop" for r in results) >= 0.95 * len(results)
    # the scripted user gave the identity the gold calls use when asked for it
    needs_id = [r for r in results if len(r["transcript"]) > 3]
    assert sum(r["identity_given"] for r in needs_id) >= 0.95 * len(needs_id)


@pytest.mark.parametrize("cls", [TauRetailEnv, TauAirlineEnv])
def test_gold_agent_with_scripted_user_generated(cls):
    env = cls(data="generated", split="test")
    results, fails = _run(env)
    assert not fails, fails
    assert all(r["end_reason"] == "user_stop" for r in results)
    assert all(r["success"] for r in results)     # the env reports success (reward 1) itself


def test_an_agent_that_skips_the_writes_fails():
    env = TauRetailEnv(data="generated")
    obs, info = env.reset(seed=0, options={"task_index": 0})
    reward = None
    for _ in range(10):
        obs, reward, term, trunc, info = env.step("Is there anything else I can help you with?")
        if term or trunc:
            break
    assert (term or trunc) and reward == 0.0
    assert info["reward_info"]["db_match"] is False and info["success"] is False


# ---------------------------------------------------------------- the state-based expert (GoldExpert)
def _finish_with_expert(env, expert, max_steps=60):
    """Step the env with the expert's *text* actions (through the env's parser) until the episode ends."""
    info = {}
    for _ in range(max_steps):
        obs, r, term, trunc, info = env.step(expert.action())
        assert info["action_error"] is None, info["action_error"]
        if term or trunc:
            return r, info
    return 0.0, info


def _expert_rate(env, split, indices):
    expert = GoldExpert(env)    # one instance across the episodes, as ExpertPolicy uses it
    ok = []
    for i in indices:
        env.reset(seed=i, options={"split": split, "task_index": i})
        r, _ = _finish_with_expert(env, expert)
        ok.append(r == 1.0)     # the gold outcome (play_gold's reward on every generated/official task)
    return sum(ok) / len(ok)


@pytest.mark.parametrize("cls", [TauRetailEnv, TauAirlineEnv])
@pytest.mark.parametrize("split", ["train", "test"])
def test_expert_alone_reaches_the_gold_outcome_generated(cls, split):
    # measured: 100 % of generated retail and airline tasks, train (200 each) and test (40 each)
    env = cls(data="generated")
    assert _expert_rate(env, split, range(env.num_tasks(split))) == 1.0


@needs_official
@pytest.mark.parametrize("cls,split", [(TauRetailEnv, "train"), (TauRetailEnv, "test"), (TauAirlineEnv, "test")])
def test_expert_alone_reaches_the_gold_outcome_official(cls, split):
    # measured on every task: retail train 500/500, retail test 115/115, airline test 50/50; every 3rd here
    env = cls(data="official")
    assert _expert_rate(env, split, range(0, env.num_tasks(split), 3)) >= 0.95


@pytest.mark.parametrize("cls", [TauRetailEnv, TauAirlineEnv])
def test_expert_takes_over_after_a_wrong_policy(cls):
    """Three turns of a deliberately wrong policy (its noisy actions: corrupted gold calls, wrong reads,
    off-plan messages), then the expert finishes: it still completes every gold action."""
    env = cls(data="generated", split="train")
    expert = GoldExpert(env)
    rng = random.Random(0)
    tasks = [i for i, t in enumerate(env.tasks()) if t.actions][:30]
    solved = 0
    for i in tasks:
        env.reset(seed=i, options={"task_index": i})
        for _ in range(3):
            assert not env.step(expert.noisy_action(rng))[2]
        r, info = _finish_with_expert(env, expert)
        solved += r == 1.0 and all(expert.done())
    # measured on all 200 generated train tasks: retail 200/200, airline 191/200 (a corrupted write that
    # succeeded, e.g. a booking with a mis-typed name, cannot be undone); these first 30: 30/30 each
    assert solved >= 0.9 * len(tasks)


def test_expert_state_rules():
    env = TauRetailEnv(data="generated", split="train")
    i = next(i for i, t in enumerate(env.tasks()) if t.actions[0].name.startswith("find_user_id")
             and any(a.name == "cancel_pending_order" for a in t.actions))
    env.reset(seed=0, options={"task_index": i})
    expert, gold = GoldExpert(env), env.unwrapped.task.actions
    assert expert.next_step().phase == "identity"
    # the wrong policy made the identity lookup itself: no identity question, the next gold action
    env.step(ToolCall(name=gold[0].name, arguments=dict(gold[0].kwargs)))
    assert expert.done()[0] and expert.next_step().gold_index == 1
    # a failing wrong call changes nothing; a call failing where gold succeeds is retried once, not looped
    env.step(ToolCall(name="get_order_details", arguments={"order_id": "#nope"}))
    assert expert.next_step().gold_index == 1
    w = next(k for k, a in enumerate(gold) if a.name == "cancel_pending_order")
    for k in range(1, w):
        env.step(expert.action())
    step = expert.next_step()
    assert step.phase == "confirm" and step.gold_index == w and "cancel_pending_order" in step.action.content
    obs, *_ = env.step(expert.action())
    assert "yes" in obs.lower() and expert.next_step().phase == "write"
    env.step("Hello?")                         # a message in between: the write must be confirmed again
    assert expert.next_step().phase == "confirm"


def test_noisy_actions_differ_from_the_expert_and_are_plausible():
    env = TauRetailEnv(data="generated", split="train")
    expert, rng = GoldExpert(env), random.Random(1)
    kinds = set()
    for i in range(10):
        env.reset(seed=i, options={"task_index": i})
        done = False
        while not done:
            clean = expert.action()
            for _ in range(5):
                noisy = expert.noisy_action(rng)
                assert noisy != clean
                parsed = env.unwrapped.parse_action(noisy)     # well-formed: a call or a message
                kinds.add("call" if isinstance(parsed, ToolCall) else "message")
            done = env.step(clean)[2]
    assert kinds == {"call", "message"}
