"""The HERO benchmark: does hindsight beat environment feedback and GRPO when turns are scarce?

    hero-gym bench                   # default preset: SmolLM2-135M, warm-started, WebShop
    hero-gym bench --preset cpu      # WebShop, every method, 3 seeds (hours on a CPU)
    hero-gym bench --quick           # tiny random model: a smoke test of the whole pipeline
    hero-gym bench --report-only --out runs/default   # rebuild tables and plots from finished cells

(``python benchmarks/run_all.py`` takes the same options.)

Protocol, per environment:

* **One training run per (method, seed)** up to the largest budget (environment turns). The trainer
  writes a snapshot after every iteration (one batch); the model "at budget B" is the **first snapshot
  at or past B**: budgets count whole batches, so the batch that crosses B belongs to B and the top
  budget evaluates the run's final weights (each cell records the turns its snapshot actually spent).
  Every budget is read from the same run: the budgets are nested and cost one run, not one run each.
* **Methods**: the (warm-started) base, GRPO (env-truncated episodes scored with their env reward),
  env-feedback SD, full-demo (a successful rollout of the task, else the env expert's demonstration
  of that training task), HERO (rules), HERO (the policy reflecting on its own episodes, diagnoses
  that copy the future dropped) and the settle-it ablations of both, each episode's notes taken from
  an episode of another task on the same turns. Every run starts a fresh LoRA on the same weights.
* **Evaluation**: greedy, on the first N held-out test tasks, with reset seeds that do not depend on
  the training seed, so every method and seed plays exactly the same goals. The base is evaluated
  once per env (greedy decoding of fixed weights on fixed goals gives one answer) and that answer
  stands for every seed in the paired comparisons.
* **Report**: success %, mean score, valid-action %, mean turns, turns on successful episodes,
  redundant and no-effect turns per episode, optimizer steps, action tokens trained and scored turns
  (mean +- standard error over seeds), and the reference method minus each other method in success
  and in mean score with a 95% CI from a paired bootstrap that resamples goals as clusters (every seed
  of a goal together); the number of comparisons and Holm-adjusted p-values next to it; "no
  difference detected" when the interval includes 0.

Outputs in ``--out`` (relative paths resolve against the current directory): ``results.md``,
``results.csv`` (one row per evaluated cell), ``results.json`` (cells, summary, comparisons and
provenance: model, warm start, env settings, data source with path and fingerprint, budgets, seeds,
hardware, wall time, git commit), ``curves_<env>.png``, and per cell ``cells/<cell>/result.json`` +
``eval_episodes.jsonl`` and per run ``runs/<run>/`` (checkpoints, snapshots, training logs).

Rerunning with the same ``--out`` reuses a cell or a training run only when its fingerprint (the
package source code plus every setting the cell depends on) matches; the report says how many cells
were reused and keeps their original wall time. A run or cell with another fingerprint is never
deleted: it is moved to ``stale/`` in ``--out`` and the report says so.

Modules (one concept each): :mod:`.presets` (settings, presets, command line), :mod:`.source` (starting
weights), :mod:`.protocol` (runs, cells, reuse), :mod:`.stats`, :mod:`.report` (markdown, CSV, JSON),
:mod:`.plots`, :mod:`.provenance` (fingerprints, data, commit, hardware), :mod:`.workers` (process pool,
progress) and :mod:`.main` (the entry point).
"""

from __future__ import annotations

from .main import main, resolve_out
from .presets import (BASE, ENV_SETUPS, METHOD_ORDER, PRESETS, EnvSetup, Options, available_methods, build_parser,
                      method_label, parse_args, preset_label, setups_for)
from .protocol import Bench, Run, cell_key, per_task_rows, steps_at, summarise_cell, wasted_turns
from .provenance import code_fingerprint
from .stats import compare, mean_se, paired_bootstrap_ci, summarise

__all__ = ["BASE", "ENV_SETUPS", "METHOD_ORDER", "PRESETS", "Bench", "EnvSetup", "Options", "Run",
           "available_methods", "build_parser", "cell_key", "code_fingerprint", "compare", "main", "mean_se",
           "method_label", "paired_bootstrap_ci", "parse_args", "per_task_rows", "preset_label", "resolve_out",
           "setups_for", "steps_at", "summarise", "summarise_cell", "wasted_turns"]
