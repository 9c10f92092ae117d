"""Statistics of the benchmark table: bootstrap intervals that resample goals as clusters, means with
standard errors, Holm's adjustment, the per-method summary rows and the comparisons of the reference
method with every other one.

Why clusters: the base cell is evaluated once and stands for every seed, and every seed plays the same
goals, so the (seed, goal) pairs of a comparison are not independent: a goal that is easy for one
method is easy in every seed. The bootstrap therefore draws goals with replacement and keeps all seeds
of a drawn goal together; with one seed it is the ordinary paired bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from .presets import BASE, METHOD_ORDER

__all__ = ["cluster_bootstrap", "compare", "holm", "mean_se", "paired_bootstrap_ci", "summarise"]


def cluster_bootstrap(values: Sequence[float], clusters: Sequence[Hashable] | None = None, *, n_boot: int = 2000,
                      level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of ``values`` with a percentile bootstrap CI that resamples whole clusters (``clusters[i]`` is
    the cluster of ``values[i]``; ``None`` = every value its own cluster) and a two-sided bootstrap p-value
    for "the mean is 0" (twice the smaller share of resampled means on either side of 0, at most 1).

    Returns ``{"mean", "low", "high", "p", "clusters"}``. Deterministic for a given ``seed``."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError("cluster_bootstrap needs a non-empty 1-D sequence of values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if clusters is None:
        labels = np.arange(v.size)
    else:
        if len(clusters) != v.size:
            raise ValueError(f"one cluster per value: {len(clusters)} clusters for {v.size} values")
        index: dict[Hashable, int] = {}
        labels = np.array([index.setdefault(c, len(index)) for c in clusters])
    n_c = int(labels.max()) + 1
    sums = np.bincount(labels, weights=v, minlength=n_c)
    counts = np.bincount(labels, minlength=n_c).astype(float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_c, size=(n_boot, n_c))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0.0)), float(np.mean(means >= 0.0))))
    return {"mean": float(v.mean()), "low": float(lo), "high": float(hi), "p": p, "clusters": n_c}


def paired_bootstrap_ci(a: Sequence[float], b: Sequence[float], *, clusters: Sequence[Hashable] | None = None,
                        n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap confidence interval, resampling pairs, or whole
    clusters of pairs when ``clusters`` labels them (:func:`cluster_bootstrap`).

    ``a[i]`` and ``b[i]`` are the two methods' outcomes on the same unit (here one (seed, goal), clustered by
    goal). Returns ``(mean_difference, low, high)``. Deterministic for a given ``seed``.
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"paired samples must be two 1-D sequences of equal length, got {a_arr.shape} and {b_arr.shape}")
    if a_arr.size == 0:
        raise ValueError("paired_bootstrap_ci needs at least one pair")
    r = cluster_bootstrap(a_arr - b_arr, clusters, n_boot=n_boot, level=level, seed=seed)
    return r["mean"], r["low"], r["high"]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (same order as given): controls the chance of
    any false "difference detected" over the whole family at the nominal level."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def mean_se(xs: Sequence[float | None]) -> tuple[float, float]:
    """Mean and standard error of the non-missing values (``nan`` when undefined)."""
    v = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))



#: cell means averaged over seeds in the summary rows (mean and standard error)
SUMMARY_KEYS = ("success_rate", "mean_score", "valid_action_rate", "mean_turns", "mean_turns_successful",
                "redundant_per_episode", "no_effect_per_episode", "optimizer_steps", "tokens_trained",
                "scored_turns", "snapshot_turns", "demo_notes", "demo_from_expert", "future_copy_diagnoses_dropped",
                "future_copy_targets_dropped")

#: per-episode quantities with a goal-clustered bootstrap CI in the summary rows: key -> (per-task field,
#: only successful episodes)
EPISODE_CIS = {"mean_turns_successful": ("turns", True), "redundant_per_episode": ("redundant_turns", False),
               "no_effect_per_episode": ("no_effect_turns", False)}


def _episode_ci(cells: Sequence[dict[str, Any]], field: str, successful_only: bool, n_boot: int) -> tuple | None:
    vals, goals = [], []
    for c in cells:
        for r in c["per_task"]:
            if field in r and (r["success"] or not successful_only):
                vals.append(float(r[field]))
                goals.append(str(r["task"]))
    if not vals:
        return None
    b = cluster_bootstrap(vals, goals, n_boot=n_boot, seed=0)
    return b["low"], b["high"]


def summarise(cells: list[dict[str, Any]], seeds: Sequence[int], budgets: Sequence[int],
              n_boot: int = 2000) -> list[dict[str, Any]]:
    """Mean +- SE over seeds per (env, method, budget) of :data:`SUMMARY_KEYS`, and for
    :data:`EPISODE_CIS` a 95% CI over the episodes of every seed, resampling goals as clusters
    (``<key>_ci``). The base (evaluated once) is listed at budget 0."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["env"], c["method"], c["budget"]), []).append(c)
    rows = []
    for (env, method, budget), rs in groups.items():
        row: dict[str, Any] = {"env": env, "method": method, "budget": budget,
                               "seeds": len(rs) if method != BASE else "all (greedy, one evaluation)",
                               "n_goals": rs[0]["n_eval_episodes"]}
        for k in SUMMARY_KEYS:
            row[k], row[k + "_se"] = mean_se([r.get(k) for r in rs])
        for k, (field, successful_only) in EPISODE_CIS.items():
            row[k + "_ci"] = _episode_ci(rs, field, successful_only, n_boot)
        rows.append(row)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r["env"], r["budget"], order.get(r["method"], 99)))
    return rows


#: the metrics compared (per-task field -> name in the report)
COMPARED = {"success": "success", "score": "mean score"}


def compare(cells: list[dict[str, Any]], reference: str, seeds: Sequence[int], n_boot: int,
            metrics: Sequence[str] = tuple(COMPARED)) -> list[dict[str, Any]]:
    """``reference`` minus each other method, per env, budget and metric, over the (seed, goal) pairs both
    have: the mean difference, a 95% CI from a paired bootstrap that resamples goals as clusters, its
    p-value and the Holm-adjusted p-value (``p_holm``) over the family of every comparison of that metric."""
    by = {(c["env"], c["method"], c["budget"], c["seed"]): c for c in cells}
    base = {c["env"]: c for c in cells if c["method"] == BASE}
    out = []
    envs = sorted({c["env"] for c in cells})
    for metric in metrics:
        family = []
        for env in envs:
            budgets = sorted({c["budget"] for c in cells if c["env"] == env and c["method"] == reference})
            others = sorted({c["method"] for c in cells if c["env"] == env and c["method"] != reference},
                            key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
            for budget in budgets:
                for other in others:
                    d, goals, n_seeds = [], [], 0
                    for seed in seeds:
                        ref = by.get((env, reference, budget, seed))
                        oth = base.get(env) if other == BASE else by.get((env, other, budget, seed))
                        if ref is None or oth is None:
                            continue
                        ra = {r["task"]: r[metric] for r in ref["per_task"]}
                        rb = {r["task"]: r[metric] for r in oth["per_task"]}
                        common = [t for t in ra if t in rb]
                        d += [ra[t] - rb[t] for t in common]
                        goals += [str(t) for t in common]
                        n_seeds += 1
                    if not d:
                        continue
                    b = cluster_bootstrap(d, goals, n_boot=n_boot, seed=0)
                    family.append({"env": env, "budget": budget, "reference": reference, "other": other,
                                   "metric": metric, "diff": b["mean"], "ci_low": b["low"], "ci_high": b["high"],
                                   "p": b["p"], "pairs": len(d), "goals": b["clusters"], "seeds": n_seeds,
                                   "bootstrap": "paired, goals resampled as clusters (all seeds of a goal together)",
                                   "verdict": "no difference detected" if b["low"] <= 0.0 <= b["high"] else
                                   (f"{reference} better" if b["low"] > 0 else f"{other} better")})
        for c, p_adj in zip(family, holm([c["p"] for c in family])):
            c["p_holm"] = p_adj
            c["comparisons"] = len(family)
        out += family
    return out
