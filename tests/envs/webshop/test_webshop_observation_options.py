"""The small-model observation options of WebShopEnv (off by default)."""

import pytest

import hero_gym


def _play(**kw):
    env = hero_gym.make("hero_gym/WebShop-v0", split="test", **kw)
    obs0, info = env.reset(options={"task_index": 0})
    obs1, _, _, _, info1 = env.step(f"search[{info['instruction']}]")
    env.close()
    return info["instruction"], obs0, obs1, info1


def test_defaults_are_faithful():
    instruction, obs0, obs1, info = _play()
    assert instruction in obs0 and instruction in obs1
    assert "Total results: 50" in obs1
    assert len([c for c in info["available_actions"]["clickables"] if c.startswith("b0")]) == 10


def test_max_results_keeps_the_top_results_only():
    _, _, full, full_info = _play()
    _, _, obs, info = _play(max_results=5)
    ids = [c for c in info["available_actions"]["clickables"] if c.startswith("b0")]
    full_ids = [c for c in full_info["available_actions"]["clickables"] if c.startswith("b0")]
    assert ids == full_ids[:5]                     # same ranking, cut to 5
    assert "Total results: 5" in obs and "next >" not in info["available_actions"]["clickables"]


def test_instruction_once_shows_it_only_in_the_first_observation():
    instruction, obs0, obs1, _ = _play(instruction_once=True)
    assert instruction in obs0
    assert instruction not in obs1 and obs1.startswith("Back to Search")


def test_bad_option_values_are_rejected():
    with pytest.raises(ValueError):
        hero_gym.make("hero_gym/WebShop-v0", max_results=0)
    with pytest.raises(ValueError):
        hero_gym.make("hero_gym/WebShop-v0", observation_mode="html", instruction_once=True)
