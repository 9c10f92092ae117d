"""The benchmark's outputs: ``results.md`` (the table), ``results.csv`` (one row per cell),
``results.json`` (cells, summary, comparisons, provenance) and one figure per env."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plots import plot_env
from .presets import BASE, Options, method_label, preset_label, worker_threads
from .protocol import iteration_seconds
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
    s, digits = (100.0, 1) if c["metric"] == "success" else (1.0, 2)
    t = f"{c['diff'] * s:+.{digits}f} [{c['ci_low'] * s:+.{digits}f}, {c['ci_high'] * s:+.{digits}f}]"
    if "p_holm" in c:
        t += f" (Holm p {c['p_holm']:.2f})"
    return t + (" no difference detected" if c["verdict"] == "no difference detected" else "")


def _with_ci(m: float | None, ci: Sequence[float] | None) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    return f"{m:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _count(m: float | None) -> str:
    return "–" if m is None or (isinstance(m, float) and math.isnan(m)) else f"{m:.0f}"


def _notes(rows: list[dict], prov: dict[str, Any], ws: bool) -> list[str]:
    """Lines under the table: the full-demo fallback rate, the dropped future copies, the runs kept aside."""
    lines = []
    def known(x: Any) -> bool:
        return x is not None and not (isinstance(x, float) and math.isnan(x))

    for r in rows:
        if r["method"] == "full_demo" and known(r.get("demo_notes")) and r["demo_notes"] == 0:
            lines.append(f"- {r['env']} B{r['budget']}: {method_label(r['method'], ws)} had no demonstration to show "
                         "(no successful rollout, and the env expert did not succeed within the turn cap or has no "
                         "expert): it did not train")
        elif r["method"] == "full_demo" and known(r.get("demo_notes")):
            lines.append(f"- {r['env']} B{r['budget']}: {method_label(r['method'], ws)} showed the env expert's "
                         f"demonstration on {r['demo_from_expert']:.1f} of {r['demo_notes']:.1f} episodes with a demo "
                         f"(mean over seeds; {100 * r['demo_from_expert'] / r['demo_notes']:.0f}% fallback)")
        if known(r.get("future_copy_diagnoses_dropped")) and (
                r["future_copy_diagnoses_dropped"] + r["future_copy_targets_dropped"]) > 0:
            lines.append(f"- {r['env']} B{r['budget']}: {method_label(r['method'], ws)} dropped "
                         f"{r['future_copy_diagnoses_dropped']:.1f} diagnoses and {r['future_copy_targets_dropped']:.1f}"
                         " targets that copied a later turn (mean over seeds)")
    aside = prov.get("kept_aside") or []
    if aside:
        lines.append(f"- {len(aside)} runs/cells computed by other code or settings were kept aside under "
                     f"`{prov.get('out', '')}/stale/` (never deleted), e.g. `{aside[0]}`")
    return lines


def _warm_start_eval_text(w: dict[str, Any]) -> str:
    ev = (w.get("report") or {}).get("eval")
    if not ev:
        return "no held-out check of its own: the base row is its held-out evaluation"
    return (f"its own held-out check: {100 * ev['valid_action_rate']:.0f}% valid actions, "
            f"{100 * ev['success_rate']:.0f}% success on {ev['episodes']} goals")


def write_markdown(rows: list[dict], comps: list[dict], prov: dict[str, Any], path: Path) -> str:
    """The table with its provenance header and notes, written to ``path`` and returned."""
    o = prov["options"]
    ref_label = method_label(o["reference"]) if o["reference"] else "(no reference method)"
    ws = o["warm_start"]
    workers = int(o.get("workers") or 1)
    n_comp = max((c.get("comparisons", 0) for c in comps), default=0)
    lines = [
        f"# HERO benchmark ({preset_label(o)})", "",
        *([f"**Partial**: rebuilt from the cells an interrupted (or still running) run had finished when this "
           f"report was made, from the provenance it recorded at its start ({prov.get('started', 'time unknown')}); "
           f"missing cells are missing rows, and comparisons use the seeds both methods have.", ""]
          if prov.get("partial") else []),
        f"- Model: `{o['model']}`{' warm-started by behaviour cloning' if ws else ''}; device {prov['hardware']['device']}",
        "- Envs: " + "; ".join(f"{e} (`{s['env_id']}`, data {s['data']['source']}"
                               + (f" at {s['data']['path']}" if s['data'].get('path') else "")
                               + f", fingerprint {s['data']['fingerprint']}, {s['eval_tasks']} held-out tasks, "
                                 f"≤ {s['max_turns']} turns, eval kwargs {s['eval_kwargs']})"
                               for e, s in prov["envs"].items()),
        f"- Budgets (training env turns, nested, one run per method and seed; the model at B is the first snapshot "
        f"at or past B, whole batches): {o['budgets']}; seeds {o['seeds']}; "
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
           and not prov.get("reused_cells") else "")
        + (" (rebuilt with --report-only from the finished cells: every run's training plus every evaluation)"
           if prov.get("report_only") else "")
        + (f" ({prov['reused_cells']} cells reused from {prov['out']} with their original wall time; "
           f"this invocation {prov['invocation_seconds'] / 60:.1f} min)" if prov.get("reused_cells") else ""),
        f"- Code: {prov['git_commit']}", "",
        f"Means ± standard error over seeds on the same greedy held-out goals. Turns on successes, redundant "
        f"turns per episode (an action repeated in the same state, invalid repeats included) and no-effect turns "
        f"(the rule reflector's verdict: a valid action that changed nothing) carry a 95% "
        f"CI over every seed's episodes; tokens trained are the action tokens that entered a loss with a "
        f"training signal, scored turns the turns with a teacher note (0 for GRPO), both up to the budget's "
        f"snapshot. The last two columns are {ref_label} minus the row's method in success (percentage "
        f"points) and in mean score, with a 95% CI from a paired bootstrap that resamples goals as clusters "
        f"(all seeds of a goal together) and the Holm-adjusted p-value over the {n_comp} comparisons of that "
        f"metric in this table; an interval that includes 0 means no difference was detected.", "",
        f"| env | budget | method | success % | mean score | valid action % | mean turns | turns on successes "
        f"| redundant turns / ep | no-effect turns / ep | optimizer steps | tokens trained | scored turns "
        f"| {ref_label} − method, success pp [95% CI] | {ref_label} − method, score [95% CI] |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    comp = {(c["env"], c["budget"], c["other"], c["metric"]): c for c in comps}
    budgets = o["budgets"]
    for r in rows:
        cis = []
        for metric in ("success", "score"):
            if r["method"] == BASE:
                cis.append(" / ".join(f"B{b}: {_ci_text(comp.get((r['env'], b, BASE, metric)))}" for b in budgets
                                      if (r["env"], b, BASE, metric) in comp))
            elif r["method"] == o["reference"]:
                cis.append("(reference)")
            else:
                cis.append(_ci_text(comp.get((r["env"], r["budget"], r["method"], metric))))
        lines.append(
            f"| {r['env']} | {r['budget']} | {method_label(r['method'], ws)} | "
            f"{_fmt(r['success_rate'], r['success_rate_se'], True)} | {_fmt(r['mean_score'], r['mean_score_se'])} | "
            f"{_fmt(r['valid_action_rate'], r['valid_action_rate_se'], True)} | "
            f"{_fmt(r['mean_turns'], r['mean_turns_se'])} | "
            f"{_with_ci(r.get('mean_turns_successful'), r.get('mean_turns_successful_ci'))} | "
            f"{_with_ci(r.get('redundant_per_episode'), r.get('redundant_per_episode_ci'))} | "
            f"{_with_ci(r.get('no_effect_per_episode'), r.get('no_effect_per_episode_ci'))} | "
            f"{_fmt(r['optimizer_steps'], r['optimizer_steps_se'])} | {_count(r.get('tokens_trained'))} | "
            f"{_count(r.get('scored_turns'))} | {cis[0]} | {cis[1]} |")
    notes = _notes(rows, prov, ws)
    if notes:
        lines += ["", *notes]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


#: the columns of ``results.csv`` (one row per cell; empty where an older cell lacks the field)
CSV_KEYS = ["env", "method", "budget", "seed", "snapshot_turns", "optimizer_steps", "tokens_trained", "scored_turns",
            "success_rate", "mean_score", "valid_action_rate", "mean_turns", "mean_turns_successful",
            "redundant_per_episode", "no_effect_per_episode", "demo_notes", "demo_from_expert",
            "future_copy_diagnoses_dropped", "future_copy_targets_dropped", "n_eval_episodes", "eval_seconds",
            "wall_seconds", "fingerprint"]


def write_csv(cells: list[dict], path: Path) -> None:
    """One row per evaluated cell (:data:`CSV_KEYS`)."""
    keys = CSV_KEYS
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
            runs.append({**r, "train_seconds": max(r["train_seconds"], _iteration_seconds(f.parent))})
    return cells, runs


def _iteration_seconds(run_dir: Path) -> float:
    """The training time a run's metrics log records, iteration by iteration (the trainer's ``train/`` log,
    or the copy ``benchmarks/sync_cells.py`` commits beside ``run.json``; 0 without one). A run resumed from
    its checkpoint by an older bench recorded only its last invocation in ``run.json``."""
    for log in (run_dir / "train" / "metrics.jsonl", run_dir / "metrics.jsonl"):
        if log.exists():
            return iteration_seconds([json.loads(line) for line in log.read_text().splitlines() if line.strip()])
    return 0.0


def report(out: Path, opts: Options, cells: list[dict], runs: list[dict], prov: dict[str, Any]) -> str:
    """Write results.{md,csv,json} and one figure per env; return the markdown."""
    rows = summarise(cells, opts.seeds, opts.budgets, n_boot=opts.bootstrap)
    comps = compare(cells, opts.reference, opts.seeds, opts.bootstrap) if opts.reference else []
    (out / "results.json").write_text(json.dumps({"provenance": prov, "summary": rows, "comparisons": comps,
                                                  "cells": cells}, indent=2, default=str))
    write_csv(cells, out / "results.csv")
    text = write_markdown(rows, comps, prov, out / "results.md")
    for env in sorted({c["env"] for c in cells}):
        plot_env(env, cells, runs, prov, out / f"curves_{env}.png")
    return text

