"""``hero-gym bench`` / ``benchmarks/run_all.py``: run the matrix (or rebuild the report from a finished
run with ``--report-only``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .mechanism import mechanism_report, saved_mechanism
from .presets import BASE, EnvSetup, Options, changed_from_preset, parse_args
from .protocol import Bench, Run
from .provenance import code_fingerprint, data_source, git_commit, hardware
from .report import collect_finished, report
from .workers import Job, Progress, run_job, run_parallel

__all__ = ["main", "resolve_out"]

#: what ``--report-only`` takes from the command line instead of the run's provenance
REPORT_SELECTION = ("envs", "methods", "budgets", "seeds", "reference", "bootstrap")


def env_provenance(s: EnvSetup, eval_tasks: int) -> dict[str, Any]:
    """An env's settings and data identity as the report states them (``eval_tasks``: the count evaluated)."""
    return {"env_id": s.env_id, "train_kwargs": s.train_kwargs, "eval_kwargs": s.eval_kwargs,
            "eval_tasks": eval_tasks, "train_tasks": s.train_tasks, "max_turns": s.max_turns,
            "data": data_source(s, s.eval_kwargs), "train_data": data_source(s, s.train_kwargs)}


def start_provenance(opts: Options, out: Path, envs: dict[str, Any]) -> dict[str, Any]:
    """What is known about a run before it starts: options, envs, code, hardware, command."""
    return {"options": asdict(opts), "out": str(out), "envs": envs, "git_commit": git_commit(),
            "code_fingerprint": code_fingerprint(), "hardware": {**hardware(), "device": opts.device or "auto"},
            "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def resolve_out(path: str) -> Path:
    """``--out`` as given: absolute, or relative to the current working directory."""
    return (Path.cwd() / path).resolve() if not Path(path).is_absolute() else Path(path)


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> dict[str, Any]:
    """Run (or with ``--report-only`` only report) the benchmark; return paths and results."""
    opts = parse_args(argv, parser)
    out = resolve_out(opts.out)
    if opts.report_only:
        if not (out / "cells").is_dir() or not any((out / "cells").glob("*/result.json")):
            raise SystemExit(f"--report-only: no finished cells in {out} (run the benchmark first, or pass --out)")
        prov_f, start_f = out / "results.json", out / "provenance.json"
        prov = json.loads(prov_f.read_text())["provenance"] if prov_f.exists() else None
        if (prov is None or prov.get("partial")) and start_f.exists():
            # an interrupted (or still running) run, or an earlier partial report of one: what it recorded
            # when it started (results.json is the finished run's own record only when not partial)
            prov = {**json.loads(start_f.read_text()), "partial": True}
        if prov is None:
            raise SystemExit(f"--report-only: neither {prov_f} nor {start_f} exists, so the run's provenance is unknown")
        # the run's settings, except the matrix the command line selects (e.g. --seeds 0 1 2 to report the
        # cells that several invocations, one per seed, wrote into the same folder)
        chosen = {k: getattr(opts, k) for k in REPORT_SELECTION if k in opts.given}
        kept = {k: v for k, v in prov["options"].items() if k not in ("out", "report_only", "changed", "given")}
        opts = Options(**{**asdict(opts), **kept, **chosen})
        opts.changed = changed_from_preset(opts)
        cells, runs = collect_finished(out, opts)
        if not cells:
            raise SystemExit(f"--report-only: no finished cells in {out} match its options")
        warm = sum(v.get("seconds_this_run", 0.0) for v in prov.get("warm_start", {}).values())
        prov = {**prov, "options": asdict(opts), "report_only": True,
                "wall_seconds": warm + sum(r["train_seconds"] for r in runs) + sum(c["eval_seconds"] for c in cells)}
        text = report(out, opts, cells, runs, prov) + saved_mechanism(out, opts)
        print(text)
        print(f"report rebuilt from {len(cells)} cells in {out}")
        return {"out": str(out), "cells": cells}

    if opts.threads and opts.workers == 1:   # with workers the main process only builds the warm start (every core)
        import torch

        torch.set_num_threads(opts.threads)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bench = Bench(opts, out, log=lambda s: None)
    runs_plan = [Run(e, m, s) for e in opts.envs for s in opts.seeds for m in opts.methods if m != BASE]
    # jobs in the order one process runs them: per env its base cell, then its training runs
    jobs: list[Job] = [job for e in opts.envs for job in [("base", e), *(("run", r) for r in runs_plan if r.env == e)]]
    n_steps = len(opts.envs) + len(runs_plan) * (1 + len(opts.budgets))
    eval_work = {e: bench._n_eval(bench.setups[e]) * bench.setups[e].max_turns for e in opts.envs}
    train_work = 3 * max(opts.budgets)
    total = sum(eval_work[e] for e in opts.envs) + sum(train_work + len(opts.budgets) * eval_work[r.env]
                                                      for r in runs_plan)
    bar = Progress(total, n_steps)
    setups_prov: dict[str, Any] = {}
    done: dict[int, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}

    def on_event(kind: str, env: str, text: str) -> None:
        bar.advance(train_work if kind == "train" else eval_work[env], text)

    # what the run is, written before anything runs (and again once the warm starts are known), so an
    # interrupted run can still be reported (``--report-only`` on a folder without results.json: partial)
    def save_start() -> None:
        envs = {e: env_provenance(bench.setups[e], bench._n_eval(bench.setups[e])) for e in opts.envs}
        (out / "provenance.json").write_text(json.dumps(
            {**start_provenance(opts, out, envs), "warm_start": bench.source.warm_start_info}, indent=2, default=str))

    save_start()
    bar.line(f"{len(opts.envs)} env(s) x {len(opts.methods)} methods x budgets {opts.budgets} x seeds {opts.seeds} "
             f"-> {len(runs_plan)} training runs" + (f" on {opts.workers} workers" if opts.workers > 1 else "")
             + f"; output {out}")
    try:
        for env in opts.envs:
            s = bench.setups[env]
            setups_prov[env] = env_provenance(s, bench._n_eval(s))
            if opts.warm_start:
                bar.line(f"{env}: warm start (built once per setting, then read from the cache)")
            if opts.workers > 1:
                bench.source.base(s)   # build the warm starts here, once, before the workers read them
        if opts.workers > 1:
            save_start()
            bench.source.release()
            done = run_parallel(opts, out, jobs, on_event, bench)
        else:
            for i, job in enumerate(jobs):
                known = len(bench.source.warm_start_info)
                done[i] = run_job(bench, job, on_event)
                if len(bench.source.warm_start_info) != known:
                    save_start()
    finally:
        bar.close()
    cells = [c for i in range(len(jobs)) for c in done[i][0]]
    runs = [meta for i in range(len(jobs)) if (meta := done[i][1]) is not None]
    invocation = time.perf_counter() - t_start
    warm_secs = sum(v.get("seconds_this_run", 0.0) for v in bench.source.warm_start_info.values())
    prov = {
        **start_provenance(opts, out, setups_prov), "warm_start": bench.source.warm_start_info,
        "reused_cells": bench.reused, "stale_cells_rerun": bench.rerun_stale,
        "kept_aside": bench.kept_aside,
        "invocation_seconds": invocation,
        # compute behind the table: every run's training plus every evaluation (reused ones keep their time)
        "wall_seconds": warm_secs + sum(r["train_seconds"] for r in runs) + sum(c["eval_seconds"] for c in cells),
    }
    text = report(out, opts, cells, runs, prov)
    text += mechanism_report(bench, opts, out)
    print(text)
    if bench.reused:
        print(f"{bench.reused} cells reused from {out} (original wall time kept)")
    if bench.rerun_stale:
        print(f"{bench.rerun_stale} cells in {out} had another code/config fingerprint and were recomputed")
    if bench.kept_aside:
        print(f"{len(bench.kept_aside)} runs/cells by other code or settings kept aside (not deleted) under "
              f"{out / 'stale'}: " + ", ".join(bench.kept_aside))
    print(f"wrote {out} in {invocation / 60:.1f} min")
    return {"out": str(out), "cells": cells, "runs": runs, "provenance": prov}
