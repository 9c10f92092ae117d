"""Episode metrics that hold for every env: success rate, mean reward and turns, valid-action
rate, and pass^k over repeated trials of the same task.

pass^k (from Tau-bench): for a task played ``n`` times with ``c`` successes,
pass^k = C(c, k) / C(n, k), the chance that ``k`` trials drawn without replacement all succeed,
averaged over tasks. pass^1 is the mean success rate. A trial is a success when it is ``True``
or a reward of 1 (Tau-bench's rule); :class:`~hero_gym.records.Episode` s carry ``success`` as
reported by the env.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from math import comb
from typing import Any

from hero_gym.records import Episode

Trials = Mapping[Any, Iterable[float | bool]] | Iterable[tuple[Any, float | bool]]


def _solved(trial: float | bool) -> bool:
    if isinstance(trial, bool):
        return trial
    return float(trial) >= 1.0 - 1e-6


def _group(results: Trials) -> dict[Any, list[bool]]:
    if isinstance(results, Mapping):
        items: Iterable[tuple[Any, float | bool]] = ((k, r) for k, rs in results.items() for r in rs)
    else:
        items = results
    out: dict[Any, list[bool]] = defaultdict(list)
    for task, trial in items:
        out[task].append(_solved(trial))
    return dict(out)


def pass_hat_k(results: Trials, k: int) -> float:
    """pass^k of ``results``: ``{task: [trial, ...]}`` or ``(task, trial)`` pairs, a trial being a
    success flag or a reward. ``ValueError`` when a task has fewer than ``k`` trials or there are none."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    groups = _group(results)
    if not groups:
        raise ValueError("pass^k of no results")
    total = 0.0
    for task, trials in groups.items():
        n, c = len(trials), sum(trials)
        if n < k:
            raise ValueError(f"task {task!r} has {n} trials, fewer than k={k}")
        total += comb(c, k) / comb(n, k)
    return total / len(groups)


def pass_hat_k_table(results: Trials, ks: Iterable[int] | None = None) -> dict[int, float]:
    """pass^k for each ``k`` in ``ks`` (default: 1 up to the fewest trials of any task)."""
    groups = _group(results)
    if not groups:
        raise ValueError("pass^k of no results")
    if ks is None:
        ks = range(1, min(len(v) for v in groups.values()) + 1)
    return {k: pass_hat_k(groups, k) for k in ks}


def episode_trials(episodes: Iterable[Episode]) -> dict[str, list[bool]]:
    """Success flags of ``episodes`` grouped by task (``task_id``; an episode without one is its own task)."""
    out: dict[str, list[bool]] = defaultdict(list)
    for ep in episodes:
        out[ep.task_id or ep.episode_id].append(bool(ep.success))
    return dict(out)


def episode_pass_hat_k(episodes: Iterable[Episode], k: int) -> float | None:
    """pass^k of episodes grouped by task; ``None`` when some task was played fewer than ``k`` times."""
    groups = episode_trials(episodes)
    if not groups or min(len(v) for v in groups.values()) < k:
        return None
    return pass_hat_k(groups, k)


def valid_action_rate(episodes: Iterable[Episode]) -> float | None:
    """Share of turns whose action parsed and validated (no ``action_error``); ``None`` without turns."""
    turns = [t for ep in episodes for t in ep.turns]
    return sum(t.action_error is None for t in turns) / len(turns) if turns else None


def summarize(episodes: Sequence[Episode], ks: Iterable[int] = (1,)) -> dict[str, float | None]:
    """``episodes``, ``success_rate``, ``mean_reward`` (total reward per episode), ``mean_turns``,
    ``valid_action_rate`` and ``pass^k`` for each ``k`` in ``ks`` (``None`` where undefined)."""
    n = len(episodes)
    out: dict[str, float | None] = {
        "episodes": float(n),
        "success_rate": sum(ep.success for ep in episodes) / n if n else None,
        "mean_reward": sum(ep.total_reward for ep in episodes) / n if n else None,
        "mean_turns": sum(ep.num_turns for ep in episodes) / n if n else None,
        "valid_action_rate": valid_action_rate(episodes),
    }
    for k in ks:
        out[f"pass^{k}"] = episode_pass_hat_k(episodes, k)
    return out
