from math import comb

import pytest

from hero_gym.envs.tau_bench.metrics import pass_hat_k, pass_hat_k_table


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
