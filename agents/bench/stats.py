"""Statistics of the benchmark table: bootstrap intervals, means with standard errors, the per-method
summary rows and the comparisons of the reference method with every other one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .presets import BASE, METHOD_ORDER

__all__ = ["compare", "mean_se", "paired_bootstrap_ci", "summarise"]


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap confidence interval, resampling pairs.

    ``a[i]`` and ``b[i]`` are the two methods' outcomes on the same unit (here one (seed, goal)). Returns
    ``(mean_difference, low, high)``. Deterministic for a given ``seed``.
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"paired samples must be two 1-D sequences of equal length, got {a_arr.shape} and {b_arr.shape}")
    if a_arr.size == 0:
        raise ValueError("paired_bootstrap_ci needs at least one pair")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a_arr - b_arr
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(d.mean()), float(lo), float(hi)


def mean_se(xs: Sequence[float | None]) -> tuple[float, float]:
    """Mean and standard error of the non-missing values (``nan`` when undefined)."""
    v = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))



def summarise(cells: list[dict[str, Any]], seeds: Sequence[int], budgets: Sequence[int]) -> list[dict[str, Any]]:
    """Mean +- SE over seeds per (env, method, budget). The base (evaluated once) is listed at budget 0."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["env"], c["method"], c["budget"]), []).append(c)
    rows = []
    for (env, method, budget), rs in groups.items():
        row: dict[str, Any] = {"env": env, "method": method, "budget": budget,
                               "seeds": len(rs) if method != BASE else "all (greedy, one evaluation)",
                               "n_goals": rs[0]["n_eval_episodes"]}
        for k in ("success_rate", "mean_score", "valid_action_rate", "mean_turns", "optimizer_steps", "snapshot_turns"):
            row[k], row[k + "_se"] = mean_se([r.get(k) for r in rs])
        rows.append(row)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r["env"], r["budget"], order.get(r["method"], 99)))
    return rows


def compare(cells: list[dict[str, Any]], reference: str, seeds: Sequence[int], n_boot: int,
            metric: str = "success") -> list[dict[str, Any]]:
    """Paired bootstrap CI of ``reference`` minus each other method, per env and budget, over (seed, goal)."""
    by = {(c["env"], c["method"], c["budget"], c["seed"]): c for c in cells}
    base = {c["env"]: c for c in cells if c["method"] == BASE}
    out = []
    envs = sorted({c["env"] for c in cells})
    for env in envs:
        budgets = sorted({c["budget"] for c in cells if c["env"] == env and c["method"] == reference})
        others = sorted({c["method"] for c in cells if c["env"] == env and c["method"] != reference},
                        key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
        for budget in budgets:
            for other in others:
                a, b, n_seeds = [], [], 0
                for seed in seeds:
                    ref = by.get((env, reference, budget, seed))
                    oth = base.get(env) if other == BASE else by.get((env, other, budget, seed))
                    if ref is None or oth is None:
                        continue
                    ra = {r["task"]: r[metric] for r in ref["per_task"]}
                    rb = {r["task"]: r[metric] for r in oth["per_task"]}
                    common = [t for t in ra if t in rb]
                    a += [ra[t] for t in common]
                    b += [rb[t] for t in common]
                    n_seeds += 1
                if not a:
                    continue
                d, lo, hi = paired_bootstrap_ci(a, b, n_boot=n_boot, seed=0)
                out.append({"env": env, "budget": budget, "reference": reference, "other": other, "metric": metric,
                            "diff": d, "ci_low": lo, "ci_high": hi, "pairs": len(a), "seeds": n_seeds,
                            "verdict": "no difference detected" if lo <= 0.0 <= hi else
                            (f"{reference} better" if lo > 0 else f"{other} better")})
    return out


