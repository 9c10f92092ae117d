"""pass^k over repeated trials (Tau-bench): for a task with n trials and c successes,
pass^k = C(c, k) / C(n, k) — the chance that k trials drawn without replacement all succeed —
averaged over tasks. pass^1 is the mean success rate."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from math import comb
from typing import Any


def _group(results: Mapping[Any, Iterable[float | bool]] | Iterable[tuple[Any, float | bool]]) -> dict[Any, list[bool]]:
    if isinstance(results, Mapping):
        items = ((k, r) for k, rs in results.items() for r in rs)
    else:
        items = iter(results)
    out: dict[Any, list[bool]] = defaultdict(list)
    for task, r in items:
        out[task].append(float(r) >= 1.0 - 1e-6)   # v1 counts a trial as a success when reward == 1
    return dict(out)


def pass_hat_k(results, k: int) -> float:
    """``results``: ``{task_id: [reward, ...]}`` or an iterable of ``(task_id, reward)`` pairs.
    Tasks with fewer than ``k`` trials raise ``ValueError``."""
    if k < 1:
        raise ValueError("k must be >= 1")
    groups = _group(results)
    if not groups:
        raise ValueError("no results")
    total = 0.0
    for task, trials in groups.items():
        n, c = len(trials), sum(trials)
        if n < k:
            raise ValueError(f"task {task!r} has {n} trials, fewer than k={k}")
        total += comb(c, k) / comb(n, k)
    return total / len(groups)


def pass_hat_k_table(results, ks: Iterable[int] | None = None) -> dict[int, float]:
    """pass^k for k = 1..min trials (or the given ks)."""
    groups = _group(results)
    if ks is None:
        ks = range(1, min(len(v) for v in groups.values()) + 1)
    return {k: pass_hat_k(groups, k) for k in ks}
