"""Running the benchmark's jobs: in this process or on a pool of worker processes, with one progress
bar (and one log line per finished step) for the whole matrix."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .presets import BASE, Options, method_label, worker_threads
from .protocol import Bench

__all__ = ["Job", "Progress", "run_job", "run_parallel"]


class Progress:
    """One bar for the whole matrix (terminal) plus one line per finished step (always, also into logs).

    Work is counted in estimated environment turns (training turns weigh 3: rollout plus update), so
    the ETA follows the steps that are actually slow."""

    def __init__(self, total_work: float, total_steps: int):
        self.total, self.done, self.steps, self.n = total_work, 0.0, total_steps, 0
        self.t0 = time.perf_counter()
        self.tty = sys.stdout.isatty()
        self._rich = None
        if self.tty:
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self._rich.start()
            self._task = self._rich.add_task("benchmark", total=total_work)

    def line(self, text: str) -> None:
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done) if self.done > 0 else float("nan")
        eta_s = "?" if math.isnan(eta) else f"{eta / 60:.1f} min"
        msg = f"[{self.n}/{self.steps} steps, {100 * self.done / max(self.total, 1e-9):.0f}%, {el / 60:.1f} min, ETA {eta_s}] {text}"
        if self._rich is not None:
            self._rich.console.print(msg, markup=False, highlight=False)
        else:
            print(msg, flush=True)

    def advance(self, work: float, text: str, step: bool = True) -> None:
        self.done += work
        self.n += int(step)
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, description=f"benchmark {self.n}/{self.steps} steps")
        self.line(text)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


#: one unit of work: ``("base", env)`` evaluates an env's starting model, ``("run", Run)`` trains one run
#: and evaluates its snapshot at every budget
Job = tuple[str, Any]


def run_job(bench: Bench, job: Job, emit: Callable[[str, str, str], None]) -> tuple[list[dict[str, Any]],
                                                                                   dict[str, Any] | None]:
    """Run one job; return its cells and (for a training run) the run's record. ``emit(kind, env, line)``
    reports progress: kind ``"train"`` after a run's training, ``"cell"`` after each evaluated cell."""
    kind, what = job
    opts = bench.opts
    if kind == "base":
        c = bench.base_cell(what)
        emit("cell", what, cell_line(c, opts))
        return [c], None
    cells: list[dict[str, Any]] = []
    bench.log = lambda text: emit("train", what.env, text)

    def on_cell(res: dict[str, Any]) -> None:
        cells.append(res)
        emit("cell", what.env, cell_line(res, opts))

    meta = bench.run_cells(what, on_cell)
    return cells, meta


_WORKER: dict[str, Any] = {}


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = [g.strip() for g in env.split(",") if g.strip()] if env else []
    return listed or [str(i) for i in range(torch.cuda.device_count())]


def worker_gpu(index: int, gpus: Sequence[str]) -> str | None:
    """The GPU of worker ``index``: worker ``i`` gets ``gpus[i]`` (round robin past the last); ``None``
    without GPUs."""
    return gpus[index % len(gpus)] if gpus else None


def _worker_init(opts: Options, out: str, events: Any, counter: Any = None, gpus: Sequence[str] = ()) -> None:
    if counter is not None:   # worker i on GPU i: set before this process touches CUDA (vLLM inherits it)
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        gpu = worker_gpu(index, gpus)
        if gpu is not None:   # this worker's "cuda" is that GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # N workers' weight-loading bars would interleave with the matrix bar

    torch.set_num_threads(worker_threads(opts.threads, opts.workers, os.cpu_count()))
    _WORKER["bench"] = Bench(opts, Path(out), log=lambda s: None)
    _WORKER["events"] = events


def _worker_job(job: Job) -> tuple[list[dict[str, Any]], dict[str, Any] | None, int, int, list[str]]:
    bench = _WORKER["bench"]
    bench.reused = bench.rerun_stale = 0
    bench.kept_aside = []
    cells, meta = run_job(bench, job, lambda kind, env, text: _WORKER["events"].put((kind, env, text)))
    return cells, meta, bench.reused, bench.rerun_stale, bench.kept_aside


def run_parallel(opts: Options, out: Path, jobs: Sequence[Job], on_event: Callable[[str, str, str], None],
                  counts: Bench) -> dict[int, tuple[list[dict[str, Any]], dict[str, Any] | None]]:
    """Run ``jobs`` on ``opts.workers`` spawned processes (each its own model copy and torch threads),
    forwarding their progress events to ``on_event`` as they come and adding their reused/recomputed
    cell counts and the folders they kept aside to ``counts``. Returns each job's result by its index in ``jobs``. A failed job stops the
    others and re-raises; cells finished before it stay in ``out`` for the next run to reuse."""
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    results: dict[int, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}
    pool = ProcessPoolExecutor(max_workers=min(opts.workers, len(jobs)), mp_context=ctx,
                               initializer=_worker_init,
                               initargs=(opts, str(out), events, ctx.Value("i", 0),
                                         visible_gpus() if opts.device in (None, "cuda") else []))   # cuda:k: every worker there
    ok = False
    try:
        pending = {pool.submit(_worker_job, job): i for i, job in enumerate(jobs)}

        def drain(timeout: float) -> None:
            try:
                while True:
                    on_event(*events.get(timeout=timeout))
                    timeout = 0.0
            except queue_mod.Empty:
                pass

        while pending:
            drain(0.5)
            for fut in [f for f in pending if f.done()]:
                i = pending.pop(fut)
                cells, meta, reused, stale, aside = fut.result()
                results[i] = (cells, meta)
                counts.reused += reused
                counts.rerun_stale += stale
                counts.kept_aside += aside
        drain(0.2)
        ok = True
    finally:
        if not ok:   # stop the other workers now rather than after their runs
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(wait=ok, cancel_futures=True)
    return results


def cell_line(c: dict[str, Any], opts: Options) -> str:
    who = f"{c['env']} {method_label(c['method'], opts.warm_start)}"
    where = "start" if c["method"] == BASE else f"budget {c['budget']} seed {c['seed']} (snapshot at {c['snapshot_turns']} turns, {c['optimizer_steps']} steps)"
    va = c.get("valid_action_rate")
    return (f"{who} {where}: success {100 * c['success_rate']:.0f}%, score {c['mean_score']:.2f}, "
            f"valid {'–' if va is None else f'{100 * va:.0f}%'}, turns {c['mean_turns']:.1f}"
            + (" (reused)" if c.get("reused") else f" ({c['eval_seconds']:.0f} s eval)"))
