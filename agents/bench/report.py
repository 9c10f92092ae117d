"""The benchmark's outputs: ``results.md`` (the table), ``results.csv`` (one row per cell),
``results.json`` (cells, summary, comparisons, provenance) and one figure per env."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .plots import plot_env
from .presets import BASE, Options, method_label, preset_label, worker_threads
from .stats import compare, summarise

__all__ = ["collect_finished", "report", "write_csv", "write_markdown"]


def _fmt(m: float, se: float = float("nan"), pct: bool = False) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    s = 100.0 if pct else 1.0
    digits = 1 if pct else 2
    return f"{m * s:.{digits}f}" + ("" if se is None or math.isnan(se) else f" ± {se * s:.{digits}f}")


def _ci_text(c: dict[str, Any] | None) -> str:
    if c is None:
        return ""
    t = f"{c['diff'] * 100:+.1f} [{c['ci_low'] * 100:+.1f}, {c['ci_high'] * 100:+.1f}]"
    return t + (" no difference detected" if c["verdict"] == "no difference detected" else "")


def _warm_start_eval_text(w: dict[str, Any]) -> str:
    ev = (w.get("report") or {}).get("eval")
    if not ev:
        return "no held-out check of its own: the base row is its held-out evaluation"
    return (f"its own held-out check: {100 * ev['valid_action_rate']:.0f}% valid actions, "
            f"{100 * ev['success_rate']:.0f}% success on {ev['episodes']} goals")


def write_markdown(rows: list[dict], comps: list[dict], prov: dict[str, Any], path: Path) -> str:
    o = prov["options"]
    ref_label = method_label(o["reference"]) if o["reference"] else "(no reference method)"
    ws = o["warm_start"]
    workers = int(o.get("workers") or 1)
    lines = [
        f"# HERO benchmark ({preset_label(o)})", "",
        f"- Model: `{o['model']}`{' warm-started by behaviour cloning' if ws else ''}; device {prov['hardware']['device']}",
        f"- Envs: " + "; ".join(f"{e} (`{s['env_id']}`, data {s['data']['source']}"
                               + (f" at {s['data']['path']}" if s['data'].get('path') else "")
                               + f", fingerprint {s['data']['fingerprint']}, {s['eval_tasks']} held-out tasks, "
                                 f"≤ {s['max_turns']} turns, eval kwargs {s['eval_kwargs']})"
                               for e, s in prov["envs"].items()),
        f"- Budgets (training env turns, nested, one run per method and seed): {o['budgets']}; seeds {o['seeds']}; "
        f"batch {o['tasks_per_update']} tasks x {o['group_size']} rollouts; lr {o['lr']}",
        *(f"- Warm start for {e}: " + (f"`{w['path']}` ({_warm_start_eval_text(w)})" if w.get("path")
                                       else f"none ({w.get('unavailable')}); the raw model is the base")
          for e, w in prov.get("warm_start", {}).items()),
        f"- Hardware: {prov['hardware']['cpu_count']} CPUs ({prov['hardware']['processor']}), torch "
        f"{prov['hardware']['torch']}, " + (
            f"{workers} worker processes x {worker_threads(o.get('threads'), workers, prov['hardware']['cpu_count'])}"
            f" thread(s) (the warm start: {prov['hardware']['torch_threads']} threads)" if workers > 1
            else f"{prov['hardware']['torch_threads']} threads"),
        f"- Wall time: {prov['wall_seconds'] / 60:.1f} min of compute"
        + (f", {prov['invocation_seconds'] / 60:.1f} min on the clock" if workers > 1 and not prov.get("report_only")
           and not prov["reused_cells"] else "")
        + (" (rebuilt with --report-only from the finished cells: every run's training plus every evaluation)"
           if prov.get("report_only") else "")
        + (f" ({prov['reused_cells']} cells reused from {prov['out']} with their original wall time; "
           f"this invocation {prov['invocation_seconds'] / 60:.1f} min)" if prov["reused_cells"] else ""),
        f"- Code: {prov['git_commit']}", "",
        f"Success, score, valid actions and turns are means ± standard error over seeds on the same greedy "
        f"held-out goals. The last column is {ref_label} minus the row's method in success percentage points "
        f"with a paired bootstrap 95% CI over (seed, goal); an interval that includes 0 means no difference "
        f"was detected.", "",
        f"| env | budget | method | success % | mean score | valid action % | mean turns | optimizer steps "
        f"| {ref_label} − method, pp [95% CI] |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    comp = {(c["env"], c["budget"], c["other"]): c for c in comps}
    budgets = o["budgets"]
    for r in rows:
        if r["method"] == BASE:
            ci = " / ".join(f"B{b}: {_ci_text(comp.get((r['env'], b, BASE)))}" for b in budgets
                            if (r["env"], b, BASE) in comp)
        elif r["method"] == o["reference"]:
            ci = "(reference)"
        else:
            ci = _ci_text(comp.get((r["env"], r["budget"], r["method"])))
        lines.append(
            f"| {r['env']} | {r['budget']} | {method_label(r['method'], ws)} | "
            f"{_fmt(r['success_rate'], r['success_rate_se'], True)} | {_fmt(r['mean_score'], r['mean_score_se'])} | "
            f"{_fmt(r['valid_action_rate'], r['valid_action_rate_se'], True)} | "
            f"{_fmt(r['mean_turns'], r['mean_turns_se'])} | {_fmt(r['optimizer_steps'], r['optimizer_steps_se'])} | "
            f"{ci} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_csv(cells: list[dict], path: Path) -> None:
    keys = ["env", "method", "budget", "seed", "snapshot_turns", "optimizer_steps", "success_rate", "mean_score",
            "valid_action_rate", "mean_turns", "n_eval_episodes", "eval_seconds", "wall_seconds", "fingerprint"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(cells)



def collect_finished(out: Path, opts: Options) -> tuple[list[dict], list[dict]]:
    """The finished cells and run records in ``out`` that belong to the matrix of ``opts``."""
    cells, runs = [], []
    for f in sorted((out / "cells").glob("*/result.json")):
        c = json.loads(f.read_text())
        if c["env"] in opts.envs and c["method"] in opts.methods and (c["method"] == BASE or (
                c["budget"] in opts.budgets and c["seed"] in opts.seeds)):
            cells.append(c)
    for f in sorted((out / "runs").glob("*/run.json")):
        r = json.loads(f.read_text())
        if r["env"] in opts.envs and r["method"] in opts.methods and r["seed"] in opts.seeds:
            runs.append(r)
    return cells, runs


def report(out: Path, opts: Options, cells: list[dict], runs: list[dict], prov: dict[str, Any]) -> str:
    """Write results.{md,csv,json} and one figure per env; return the markdown."""
    rows = summarise(cells, opts.seeds, opts.budgets)
    comps = compare(cells, opts.reference, opts.seeds, opts.bootstrap) if opts.reference else []
    (out / "results.json").write_text(json.dumps({"provenance": prov, "summary": rows, "comparisons": comps,
                                                  "cells": cells}, indent=2, default=str))
    write_csv(cells, out / "results.csv")
    text = write_markdown(rows, comps, prov, out / "results.md")
    for env in sorted({c["env"] for c in cells}):
        plot_env(env, cells, runs, prov, out / f"curves_{env}.png")
    return text

