"""The oracle hook (``MultiTurnEnv.oracle_action``) of every shipped env: from the reset state it reaches its
expert's success rate, and from a state a random policy reached it still acts validly (and, with turns left,
still succeeds where the expert does)."""

import random

import pytest

import hero_gym
from hero_gym.core import MultiTurnEnv
from hero_gym.envs.tau_bench.common import TRANSFER_TOOL
from hero_gym.envs.tau_bench.gold_expert import play_gold
from hero_gym.envs.webshop.expert import ExpertAgent, RandomAgent, run_episode


def _play_oracle(env, max_steps=80):
    """Step ``env`` with its oracle until the episode ends; every oracle action must be valid."""
    info, reward = {}, 0.0
    for _ in range(max_steps):
        a = env.unwrapped.oracle_action()
        assert a is not None, "the oracle stopped before the episode ended"
        obs, reward, term, trunc, info = env.step(a)
        assert info["action_error"] is None, (a, info["action_error"])
        if term or trunc:
            assert env.unwrapped.oracle_action() is None   # nothing to do after the end
            return info.get("success", False)
    return False


def test_the_base_class_has_no_oracle():
    assert MultiTurnEnv.has_oracle is False
    env = hero_gym.make("hero_gym/Lookup-v0")
    assert env.unwrapped.has_oracle
    assert MultiTurnEnv.oracle_action(env.unwrapped) is None


# ---------------------------------------------------------------- WebShop: the goal-knowing expert
@pytest.fixture(scope="module")
def ws():
    e = hero_gym.make("hero_gym/WebShop-v0", split="train", max_turns=15, max_results=5, instruction_once=True)
    yield e
    e.close()


def test_webshop_oracle_from_reset_equals_the_goal_knowing_expert(ws):
    n = 40
    expert = [run_episode(ws, ExpertAgent(), options={"task_index": i}) for i in range(n)]
    oracle = []
    for i in range(n):
        ws.reset(options={"task_index": i})
        oracle.append(_play_oracle(ws))
    assert oracle == [e["success"] for e in expert]       # the same episodes: the same outcome per goal
    assert sum(oracle) / n > 0.5


def test_webshop_oracle_acts_from_random_states(ws):
    rng = random.Random(0)
    reached, ok_after, ok_expert = 0, 0, 0
    for i in range(30):
        obs, info = ws.reset(options={"task_index": i})
        agent = RandomAgent(seed=i)
        agent.reset(info)
        ended = False
        for _ in range(rng.randint(1, 5)):
            a = agent.act(obs, info)
            if a == "click[buy now]":
                continue
            obs, r, term, trunc, info = ws.step(a)
            if term or trunc:
                ended = True
                break
        if ended:
            continue
        reached += 1
        ok_after += _play_oracle(ws)
        ws.reset(options={"task_index": i})
        ok_expert += _play_oracle(ws)
    assert reached >= 20
    assert ok_after == ok_expert     # the goal-aware oracle recovers from any random detour (turns permitting)


def test_webshop_oracle_goes_back_from_a_wrong_product(ws):
    obs, info = ws.reset(options={"task_index": 0})
    ws.step(f"search[{info['instruction']}]")
    inner = ws.unwrapped
    others = [a for a in inner.shop.page_asins(inner.state) if a != inner.goal.asin]
    if inner.goal.asin not in inner.shop.results(inner.state.query) or not others:
        pytest.skip("goal 0 is not a findable goal with a distractor on its page")
    ws.step(f"click[{others[0].lower()}]")
    assert inner.oracle_action() == "click[< prev]"


# ---------------------------------------------------------------- Tau-bench: the gold expert
@pytest.mark.parametrize("env_id", ["hero_gym/TauRetail-v0", "hero_gym/TauAirline-v0"])
def test_tau_oracle_from_reset_reaches_play_gold(env_id):
    env = hero_gym.make(env_id, data="generated", split="train")
    n = 6
    gold = [play_gold(env.unwrapped, seed=i, options={"task_index": i})["success"] for i in range(n)]
    oracle = []
    for i in range(n):
        env.reset(seed=i, options={"task_index": i})
        oracle.append(_play_oracle(env))
    assert oracle == gold and all(gold)


@pytest.mark.parametrize("env_id", ["hero_gym/TauRetail-v0", "hero_gym/TauAirline-v0"])
def test_tau_oracle_acts_from_random_states(env_id):
    env = hero_gym.make(env_id, data="generated", split="train")
    rng = random.Random(1)
    names = [t.name for t in env.unwrapped.tool_list if t.name != TRANSFER_TOOL]   # a transfer ends the episode
    solved = 0
    for i in range(6):
        env.reset(seed=i, options={"task_index": i})
        for _ in range(rng.randint(1, 3)):    # random messages and random read calls with empty arguments
            a = rng.choice(["Hello, how can I help?", f'<tool_call>{{"name": "{rng.choice(names)}", '
                            '"arguments": {}}</tool_call>'])
            *_, term, trunc, _ = env.step(a)
            assert not (term or trunc)
        solved += _play_oracle(env)
    assert solved >= 5


# ---------------------------------------------------------------- Lookup: the solver
def test_lookup_oracle_from_reset_and_from_random_states():
    env = hero_gym.make("hero_gym/Lookup-v0", max_turns=8)
    rng = random.Random(0)
    n = env.unwrapped.num_tasks()
    for i in range(n):
        env.reset(options={"task_index": i})
        assert env.unwrapped.oracle_action().startswith("<tool_call>")
        assert _play_oracle(env)
    for i in range(n):
        env.reset(options={"task_index": i})
        for _ in range(rng.randint(1, 3)):
            env.step(rng.choice(["hi", '<tool_call>{"name": "lookup", "arguments": {"key": "nothing"}}</tool_call>',
                                 '<tool_call>{"name": "lookup", "arguments": {"key": "apple"}}</tool_call>']))
        assert _play_oracle(env)
