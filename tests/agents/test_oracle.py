"""The oracle recorder and the ceiling's target: refusals with a clear message, targets in the env's syntax."""
import gymnasium as gym
import pytest

import hero_gym
from hero_gym.agents.oracle import OracleRecorder, oracle_target, recording_oracle
from hero_gym.records import Episode, Turn


def test_an_env_without_an_oracle_is_refused_and_closed():
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="needs an env with an oracle"):
        recording_oracle(env, "method 'hero_rules_oracle'")
    assert isinstance(recording_oracle(hero_gym.make("hero_gym/Lookup-v0"), "x"), OracleRecorder)


def test_webshop_target_is_a_bracket_action_and_a_missing_recording_is_none():
    page = "Instruction: buy a lamp [SEP] Back to Search [SEP] Lamp A"
    turns = [Turn(index=0, action_text="click[4]", observation="x", info={"oracle_action": "click[Lamp A]"}),
             Turn(index=1, action_text="click[4]", observation="x", info={})]
    ep = Episode(env_id="hero_gym/WebShop-v0", initial_observation=page, turns=turns)
    assert oracle_target(ep, 0) == {"name": "click", "arguments": {"target": "Lamp A"}}
    assert oracle_target(ep, 1) is None                 # a turn cut before the env stepped
    for t in ep.turns:
        t.info.pop("oracle_action", None)
    with pytest.raises(ValueError, match="OracleRecorder"):
        oracle_target(ep, 0)
