"""The non-privileged WebShop expert (InstructionExpert)."""

import random

import pytest

import hero_gym
from hero_gym.envs.webshop.expert import InstructionExpert, evaluate


@pytest.fixture(scope="module")
def env():
    e = hero_gym.make("hero_gym/WebShop-v0", split="train", max_turns=8)
    yield e
    e.close()


def test_solves_most_train_goals_without_knowing_the_product(env):
    out = evaluate(env, InstructionExpert(env), split="train", n=100)
    assert 0.5 <= out["success_rate"] < 1.0      # it does not know the goal product, so it is not perfect
    assert out["mean_reward"] > 0.6


def test_acts_validly_from_any_state(env):
    """From states reached by random clicks (sub pages, later result pages, wrong items) its action is valid."""
    expert = InstructionExpert(env)
    rng = random.Random(0)
    checked = 0
    for i in range(20):
        obs, info = env.reset(options={"task_index": i})
        env.step(f"search[{info['instruction']}]")
        for _ in range(rng.randint(0, 3)):
            clickables = env.unwrapped.shop.available_actions(env.unwrapped.state)["clickables"]
            if env.unwrapped.state.kind == "search":
                break
            choice = rng.choice([c for c in clickables if c != "buy now"])
            *_, term, trunc, _ = env.step(f"click[{choice}]")
        if env.unwrapped.state.kind in ("search", "done"):
            continue
        obs, reward, term, trunc, info = env.step(expert.action())
        assert info["action_error"] is None, obs
        checked += 1
    assert checked >= 10


def test_needs_the_in_process_env():
    with pytest.raises(TypeError):
        InstructionExpert(object())
