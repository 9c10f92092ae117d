"""One figure per env: held-out success and mean turns against training turns spent (mean ± SE over
seeds), and the training-episode reward against turns spent."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .presets import BASE, METHOD_ORDER, method_label, preset_label
from .stats import mean_se

__all__ = ["plot_env"]

_STYLE = {BASE: ("#7f7f7f", "s", ":"), "grpo": ("#1f77b4", "o", "-"), "envfb_sd": ("#ff7f0e", "v", "-"),
          "full_demo": ("#2ca02c", "^", "-"), "hero_rules": ("#9467bd", "D", "--"),
          "hero_rules_shuffled": ("#e377c2", "P", ":"), "hero": ("#d62728", "*", "-"),
          "hero_shuffled": ("#8c564b", "X", "-.")}


def _curve(cells: list[dict], base: dict | None, method: str, metric: str, seeds: Sequence[int]) -> list[tuple]:
    """(x, mean, se) per budget for one method, x = turns spent (0 = the base, which every run starts from)."""
    pts = []
    if base is not None:
        pts.append((0, base[metric], float("nan")))
    for b in sorted({c["budget"] for c in cells if c["method"] == method}):
        vals = [c[metric] for c in cells if c["method"] == method and c["budget"] == b]
        m, se = mean_se(vals)
        pts.append((b, m, se))
    return pts


def plot_env(env: str, cells: list[dict], runs: list[dict], prov: dict[str, Any], path: Path) -> Path:
    """One figure per env: held-out success and mean turns vs training turns spent (mean ± SE band over
    seeds), and the training-episode reward vs turns spent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    o = prov["options"]
    env_cells = [c for c in cells if c["env"] == env]
    base = next((c for c in env_cells if c["method"] == BASE), None)
    methods = [m for m in METHOD_ORDER if any(c["method"] == m for c in env_cells) and m != BASE]
    max_turns = prov["envs"][env]["max_turns"]
    xmax = max(o["budgets"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    notes = []
    for ax, metric, ylabel, scale, ylim in (
            (axes[0], "success_rate", "held-out success (%)", 100.0, (-3, 103)),
            (axes[1], "mean_turns", f"held-out mean turns per episode (cap {max_turns})", 1.0,
             (-0.03 * max_turns, 1.03 * max_turns))):
        curves = {m: _curve(env_cells, base, m, metric, o["seeds"]) for m in methods}
        n_points = max((len(v) for v in curves.values()), default=0)
        if n_points < 2:
            ax.text(0.5, 0.5, "fewer than 2 points per method:\nno curve drawn", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            # identical series would hide each other: offset them slightly along x and list them
            seen: dict[tuple, list[str]] = {}
            for m, pts in curves.items():
                seen.setdefault(tuple(round(p[1], 6) for p in pts), []).append(m)
            offset = {m: 0.0 for m in methods}
            for group in seen.values():
                if len(group) > 1:
                    notes.append(f"{ylabel.split(' (')[0]}: identical for " + ", ".join(method_label(m) for m in group))
                    for i, m in enumerate(group):
                        offset[m] = (i - (len(group) - 1) / 2) * 0.012 * xmax
            for m, pts in curves.items():
                color, marker, ls = _STYLE.get(m, ("k", "o", "-"))
                xs = np.array([p[0] for p in pts], dtype=float) + offset[m]
                ys = np.array([p[1] for p in pts], dtype=float) * scale
                se = np.nan_to_num(np.array([p[2] for p in pts], dtype=float)) * scale
                ax.plot(xs, ys, marker=marker, ls=ls, color=color, label=method_label(m, o["warm_start"]), ms=6)
                ax.fill_between(xs, ys - se, ys + se, color=color, alpha=0.15, lw=0)
        ax.set_ylim(*ylim)
        if metric == "mean_turns":
            ax.axhline(max_turns, color="#999", lw=0.8, ls=":")
        ax.set_xlim(-0.03 * xmax, 1.05 * xmax)
        ax.set_xlabel("training turns spent (0 = " + ("warm-started " if o["warm_start"] else "") + "base)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    # training reward vs turns (per-update rows of every seed; mean ± SE on a common grid)
    ax = axes[2]
    grid = np.linspace(0, xmax, 21)
    drawn = 0
    same: dict[tuple, list[str]] = {}
    for m in methods:
        seqs = []
        for r in runs:
            if r["env"] != env or r["method"] != m or not r.get("metrics"):
                continue
            t = np.array([x["turns_used"] for x in r["metrics"]], dtype=float)
            v = np.array([x["mean_reward"] for x in r["metrics"]], dtype=float)
            idx = np.searchsorted(t, grid, side="right") - 1   # last update at or before each grid point
            seqs.append(np.where(idx >= 0, v[np.clip(idx, 0, None)], np.nan))
        if not seqs or sum(len(r["metrics"]) for r in runs if r["env"] == env and r["method"] == m) < 2:
            continue
        arr = np.vstack(seqs)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(arr, axis=0)
            cnt = np.sum(~np.isnan(arr), axis=0)
            se = np.where(cnt > 1, np.nanstd(arr, axis=0, ddof=1) / np.sqrt(np.maximum(cnt, 1)), 0.0)
        same.setdefault(tuple(np.round(np.nan_to_num(mean, nan=-1.0), 6)), []).append(m)
        color, marker, ls = _STYLE.get(m, ("k", "o", "-"))
        ax.step(grid, mean, where="post", color=color, ls=ls, label=method_label(m))
        ax.fill_between(grid, mean - se, mean + se, step="post", color=color, alpha=0.15, lw=0)
        drawn += 1
    for group in same.values():
        if len(group) > 1:
            notes.append("training reward: identical (drawn on top of each other) for "
                         + ", ".join(method_label(m) for m in group))
    if not drawn:
        ax.text(0.5, 0.5, "fewer than 2 updates per method:\nno training curve", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlim(-0.03 * xmax, 1.05 * xmax)
    ax.set_ylim(-0.03, 1.03)   # every shipped env's episode reward lies in [0, 1]
    ax.set_xlabel("training turns spent")
    ax.set_ylabel("mean training-episode reward")
    ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[2].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(7, len(labels)), fontsize=8)
    data = prov["envs"][env]["data"]
    fig.suptitle(f"{env} — model {o['model']}{' (warm-started)' if o['warm_start'] else ''} — data {data['source']} "
                 f"({data['fingerprint']}) — seeds {o['seeds']} — {prov['envs'][env]['eval_tasks']} greedy held-out "
                 f"tasks — {preset_label(o)}" + (" — PARTIAL: unfinished cells missing" if prov.get("partial") else ""),
                 fontsize=10)
    if notes:
        fig.text(0.01, 0.085, "Identical series (held-out panels: offset along x to stay visible): " + "; ".join(notes),
                 fontsize=7, color="#444", wrap=True)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

