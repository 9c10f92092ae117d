"""benchmarks/check_predictions.py: verdicts from goal-clustered paired CIs, on synthetic cells with a known answer."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import check_predictions as cp  # noqa: E402


@pytest.mark.parametrize("low, high, claim, expected", [
    (0.1, 0.3, ">", "held"), (-0.3, -0.1, ">", "contradicted"), (-0.1, 0.2, ">", "no difference detected"),
    (-0.3, -0.1, "<", "held"), (0.1, 0.3, "not >", "contradicted"), (-0.1, 0.2, "not >", "held (no difference detected)"),
    (-0.3, -0.1, "not <", "contradicted"), (-0.1, 0.1, "=", "held (no difference detected)"),
    (0.1, 0.2, "=", "contradicted (a difference)")])
def test_verdicts(low, high, claim, expected):
    assert cp.verdict(low, high, claim) == expected


def _cell(method, seed, successes, valid):
    per_task = [{"task": g, "success": float(s), "score": float(s), "turns": 4, "valid_turns": v, "redundant_turns": 0}
                for g, (s, v) in enumerate(zip(successes, valid))]
    return {"env": "WebShop", "method": method, "budget": 0 if method == "base" else 64, "seed": None if method == "base" else seed,
            "per_task": per_task}


def test_a_clear_difference_holds_and_an_equal_pair_is_not_detected(tmp_path):
    n = 40
    cells = [_cell("base", None, [0] * n, [2] * n)]
    for seed in (0, 1, 2):
        cells += [_cell("hero_rules", seed, [1] * 30 + [0] * 10, [4] * n), _cell("envfb_sd", seed, [0] * n, [1] * n),
                  _cell("hero_rules_shuffled", seed, [0] * n, [1] * n)]
    for i, c in enumerate(cells):
        d = tmp_path / "cells" / f"c{i}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(c))
    rows = {r["id"]: r for r in cp.check(tmp_path, n_boot=300)}
    assert rows["1a"]["verdict"] == "held" and rows["1b"]["verdict"] == "held" and rows["1c"]["verdict"] == "held"
    assert rows["1b"]["goals"] == n and rows["1b"]["seeds"] == 3
    assert rows["2b"]["verdict"] == "held (no difference detected)"     # control: identical methods
    assert rows["2a"]["verdict"] == "held"                               # shuffled clearly below HERO
    assert rows["3"]["verdict"] == "not measurable yet"                  # no ceiling cells
    assert "| 1a |" in cp.markdown(list(rows.values()))


def test_paper_claims_read_the_small_budget_only_where_the_claim_says_so(tmp_path):
    """P1 (HERO > env-feedback SD at the small budget) is read at the smallest trained budget only: HERO wins
    there and loses at the larger one, so P1 holds while an all-budget reading would be contradicted; the
    redundant-turn claim is read at both budgets; GRPO has no cells, so P2 is not measurable."""
    n = 40
    cells = [_cell("base", None, [0] * n, [2] * n)]
    for seed in (0, 1, 2):
        for budget, hero in ((64, [1] * 30 + [0] * 10), (128, [0] * n)):
            for method, succ in (("hero_rules", hero), ("envfb_sd", [0] * 10 + [1] * 30 if budget == 128 else [0] * n),
                                 ("hero_rules_shuffled", [0] * n if budget == 64 else [0] * 10 + [1] * 30)):
                c = _cell(method, seed, succ, [4] * n)
                c["budget"] = budget
                cells.append(c)
    for i, c in enumerate(cells):
        d = tmp_path / "cells" / f"c{i}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(c))
    rows = cp.check(tmp_path, n_boot=300, claims=cp.PAPER_CLAIMS)
    p1 = [r for r in rows if r["id"] == "P1"]
    assert [(r["budget"], r["verdict"]) for r in p1] == [(64, "held")]
    assert [r["budget"] for r in rows if r["id"] == "P3a"] == [64, 128]
    assert [r["verdict"] for r in rows if r["id"] == "P2"] == ["not measurable yet"]
    assert [r["verdict"] for r in rows if r["id"] == "P4a"] == ["held (no difference detected)"] * 2   # control
    # without the small-budget restriction the same data contradict the claim at the larger budget
    free = cp.check(tmp_path, n_boot=300, claims=[(*cp.PAPER_CLAIMS[0][:6], False)])
    assert [(r["budget"], r["verdict"]) for r in free] == [(64, "held"), (128, "contradicted")]
