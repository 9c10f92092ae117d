"""pass^k and the episode metrics of hero_gym.metrics (general: no env id involved)."""

from math import comb

import pytest

from hero_gym.metrics import episode_pass_hat_k, pass_hat_k, pass_hat_k_table, summarize, valid_action_rate
from hero_gym.records import Episode, Turn


def test_pass_hat_k_formula():
    res = {"a": [1, 1, 0, 1], "b": [0, 0, 0, 1], "c": [1, 1, 1, 1]}
    assert pass_hat_k(res, 1) == pytest.approx((3 / 4 + 1 / 4 + 1) / 3)
    assert pass_hat_k(res, 2) == pytest.approx((comb(3, 2) / comb(4, 2) + 0 + 1) / 3)
    assert pass_hat_k(res, 4) == pytest.approx(1 / 3)
    pairs = [(t, r) for t, rs in res.items() for r in rs]
    assert pass_hat_k(pairs, 3) == pass_hat_k(res, 3)
    table = pass_hat_k_table(res)
    assert list(table) == [1, 2, 3, 4] and table[1] >= table[2] >= table[3] >= table[4]
    assert pass_hat_k({"a": [0.99, 1.0]}, 1) == 0.5        # success means reward 1
    with pytest.raises(ValueError):
        pass_hat_k(res, 5)
    with pytest.raises(ValueError):
        pass_hat_k({}, 1)
    assert pass_hat_k({"a": [True, False]}, 1) == 0.5      # success flags work as well as rewards
    with pytest.raises(ValueError, match="k must be"):
        pass_hat_k(res, 0)


def _ep(task, success, reward=0.0, errors=(None,)):
    turns = [Turn(index=i, action_text="a", observation="o", action_error=e) for i, e in enumerate(errors)]
    return Episode(env_id="any/Env-v0", task_id=task, initial_observation="hi", success=success,
                   total_reward=reward, turns=turns)


def test_episode_metrics_for_any_env():
    eps = [_ep("a", True, 1.0), _ep("a", False, 0.2, errors=({"kind": "parse"}, None)),
           _ep("b", True, 1.0), _ep("b", True, 1.0)]
    assert episode_pass_hat_k(eps, 1) == pytest.approx((0.5 + 1) / 2)
    assert episode_pass_hat_k(eps, 2) == pytest.approx((0 + 1) / 2)
    assert episode_pass_hat_k(eps, 3) is None                # fewer trials than k
    assert valid_action_rate(eps) == pytest.approx(4 / 5)
    s = summarize(eps, ks=(1, 2))
    assert s["success_rate"] == 0.75 and s["mean_reward"] == pytest.approx(3.2 / 4) and s["mean_turns"] == 1.25
    assert s["pass^1"] == pytest.approx(0.75) and s["pass^2"] == pytest.approx(0.5)
    assert summarize([])["success_rate"] is None and valid_action_rate([]) is None
