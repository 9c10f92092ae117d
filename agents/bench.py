"""The HERO benchmark protocol: does hindsight beat environment feedback and GRPO when turns are scarce?

    hero-gym bench                   # default preset: SmolLM2-135M, warm-started, WebShop
    hero-gym bench --preset cpu      # WebShop + TauRetail, every method, 3 seeds (hours on a CPU)
    hero-gym bench --quick           # tiny random model: a smoke test of the whole pipeline
    hero-gym bench --report-only --out runs/default   # rebuild tables and plots from finished cells

(``python benchmarks/run_all.py`` takes the same options.)

Protocol, per environment:

* **One training run per (method, seed)** up to the largest budget (environment turns). The trainer
  writes a snapshot after every optimizer update; the model "at budget B" is the largest snapshot
  whose turn count is <= B (whole batches only). So every budget is read from the same run: the
  budgets are nested and cost one run, not one run each.
* **Methods**: the (warm-started) base, GRPO, env-feedback SD, full-demo, HERO (rules), HERO (the
  policy reflecting on its own episodes) and the settle-it ablation, HERO with each episode's
  diagnoses replaced by another episode's. Every run starts a fresh LoRA on the same base weights.
* **Evaluation**: greedy, on the first N held-out test tasks, with reset seeds that do not depend on
  the training seed, so every method and seed plays exactly the same goals. The base is evaluated
  once per env (greedy decoding of fixed weights on fixed goals gives one answer) and that answer
  stands for every seed in the paired comparisons.
* **Report**: success %, mean score, valid-action %, mean turns and optimizer steps (mean +- standard
  error over seeds), and a paired bootstrap 95% CI of the reference method (HERO) minus each other
  method, paired over (seed, goal); "no difference detected" when the interval includes 0.

Outputs in ``--out`` (relative paths resolve against the current directory): ``results.md``,
``results.csv`` (one row per evaluated cell), ``results.json`` (cells, summary, comparisons and
provenance: model, warm start, env settings, data source with path and fingerprint, budgets, seeds,
hardware, wall time, git commit), ``curves_<env>.png``, and per cell ``cells/<cell>/result.json`` +
``eval_episodes.jsonl`` and per run ``runs/<run>/`` (checkpoints, snapshots, training logs).

Rerunning with the same ``--out`` reuses a cell or a training run only when its fingerprint (the
package source code plus every setting the cell depends on) matches; the report says how many cells
were reused and keeps their original wall time.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import importlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hero_gym.cli import json_or_str
from hero_gym.envs.webshop.catalog import DEFAULT_NUM_PRODUCTS

__all__ = [
    "BASE",
    "ENV_SETUPS",
    "EnvSetup",
    "Options",
    "PRESETS",
    "build_parser",
    "main",
    "paired_bootstrap_ci",
    "parse_args",
    "snapshot_for_budget",
]

BASE = "base"
#: Methods in table order; "base" is the (warm-started) starting point every other method trains from.
METHOD_ORDER = [BASE, "grpo", "envfb_sd", "full_demo", "hero_rules", "hero", "hero_shuffled"]
_FALLBACK_LABELS = {"grpo": "GRPO", "envfb_sd": "Env-feedback SD", "full_demo": "Full-demo",
                    "hero_rules": "HERO (rules)", "hero": "HERO", "hero_shuffled": "HERO (shuffled diagnoses)"}


# ============================================================================ methods / trainer hooks
def _method_specs() -> dict[str, Any] | None:
    """``hero_gym.agents.methods.METHODS`` when the trainer provides it (``None`` for an older trainer)."""
    try:
        return importlib.import_module("hero_gym.agents.methods").METHODS
    except (ImportError, AttributeError):
        return None


def method_label(method: str, warm_start: bool = False) -> str:
    """Human-readable method name for tables and plots."""
    if method == BASE:
        return "Warm-started base" if warm_start else "Base"
    specs = _method_specs()
    if specs is not None and method in specs:
        return specs[method].label
    return _FALLBACK_LABELS.get(method, method)


def available_methods() -> list[str]:
    """Methods the installed trainer can run (in table order)."""
    specs = _method_specs()
    if specs is not None:
        return [BASE] + [m for m in METHOD_ORDER[1:] if m in specs] + [m for m in specs if m not in METHOD_ORDER]
    # An older trainer: methods grpo/envfb_sd/full_demo/hero, HERO's reflector chosen separately.
    return [BASE, "grpo", "envfb_sd", "full_demo", "hero_rules", "hero"]


def _train_config_fields(method: str) -> dict[str, Any]:
    """How a benchmark method maps onto ``TrainConfig`` fields."""
    if _method_specs() is not None:
        return {"method": method}
    legacy = {"hero_rules": {"method": "hero", "reflector": "rules"}, "hero": {"method": "hero", "reflector": "llm"}}
    if method in legacy:
        return legacy[method]
    if method not in ("grpo", "envfb_sd", "full_demo"):
        raise ValueError(f"method {method!r} needs a trainer that provides it (hero_gym.agents.methods)")
    return {"method": method}


def snapshot_for_budget(snapshots: dict[int, Path], budget: int) -> tuple[int, Path]:
    """The snapshot a budget reads: the one with the most turns that is still <= ``budget``.

    ``snapshots`` maps turns spent (after a whole optimizer update) to a snapshot directory and must
    include the start (0 turns). Raises ``ValueError`` if no snapshot fits.
    """
    fitting = [t for t in snapshots if t <= budget]
    if not fitting:
        raise ValueError(f"no snapshot with <= {budget} turns (have {sorted(snapshots)})")
    t = max(fitting)
    return t, snapshots[t]


def _checkpoint_api() -> tuple[Callable[[Path], dict[int, Path]], Callable[[Any, Path], None]] | None:
    try:
        ck = importlib.import_module("hero_gym.agents.checkpoint")
        return ck.list_snapshots, ck.load_snapshot
    except (ImportError, AttributeError):
        return None


def _list_bridge_snapshots(ckpt_dir: Path) -> dict[int, Path]:
    snaps = {}
    for d in sorted((Path(ckpt_dir) / "snapshots").glob("turns_*")):
        if (d / "hero_policy.json").exists():
            snaps[int(d.name.split("_", 1)[1])] = d
    return snaps


def list_snapshots(ckpt_dir: Path) -> dict[int, Path]:
    """Snapshots of a training run: turns spent -> directory."""
    api = _checkpoint_api()
    return api[0](Path(ckpt_dir)) if api else _list_bridge_snapshots(Path(ckpt_dir))


def load_snapshot(policy: Any, path: Path) -> None:
    """Load a snapshot's trainable weights into ``policy`` in place."""
    api = _checkpoint_api()
    if api:
        api[1](policy, Path(path))
    else:
        policy.load(path)


def train_with_snapshots(policy: Any, config: Any) -> tuple[dict[int, Path], list[dict[str, Any]]]:
    """Train ``policy`` to ``config.turn_budget``; return its snapshots and per-update metric rows.

    With a trainer that snapshots by itself (``hero_gym.agents.checkpoint``) this is one ``train``
    call. An older trainer is driven one update at a time through its exact resume (optimizer, RNG
    and counters restored from the checkpoint, so the run is the same one) and the adapter is saved
    to ``snapshots/turns_<T>`` after every update.
    """
    from hero_gym.agents.trainer import train

    ckpt = Path(config.checkpoint_dir)
    if _checkpoint_api() is not None:
        res = train(policy, config)
        return list_snapshots(ckpt), list(res.metrics)
    snaps = ckpt / "snapshots"
    if not (snaps / "turns_0000000").exists():
        policy.save(snaps / "turns_0000000")
    res = None
    while True:
        step = dataclasses.replace(config, max_updates=(res.updates if res else _logged_updates(ckpt)) + 1)
        before = res.updates if res else _logged_updates(ckpt)
        res = train(policy, step)
        if res.updates > before:
            target = snaps / f"turns_{res.turns_used:07d}"
            if not target.exists():
                policy.save(target)
        if res.updates <= before or res.turns_used >= config.turn_budget:
            break
    return _list_bridge_snapshots(ckpt), list(res.metrics)


def _logged_updates(ckpt: Path) -> int:
    f = ckpt / "metrics.jsonl"
    return sum(1 for ln in f.read_text().splitlines() if ln.strip()) if f.exists() else 0


def steps_at(metrics: Sequence[dict[str, Any]], turns: int) -> int:
    """Optimizer steps taken when ``turns`` training turns had been spent."""
    rows = [m for m in metrics if (m.get("turns_used") or 0) <= turns]
    if not rows:
        return 0
    last = rows[-1]
    return int(last.get("optimizer_steps", last.get("update", len(rows))))


# ============================================================================ statistics
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


# ============================================================================ settings
@dataclass(frozen=True)
class EnvSetup:
    """How one environment is trained and evaluated."""

    name: str
    env_id: str
    train_kwargs: dict[str, Any]
    eval_kwargs: dict[str, Any]
    eval_tasks: int            # the first N held-out tasks (0 = all)
    train_tasks: int           # training tasks cycled through
    max_turns: int


def _env_setups(data_dir: str | None, num_products: int) -> dict[str, EnvSetup]:
    """Train/eval splits: Tau retail trains on the official train split and is evaluated on test;
    Tau airline (whose official data has only a test split) trains on generated airline tasks;
    WebShop trains on its training goals and is evaluated on its test goals; Lookup on disjoint seeds."""
    tau = {"data_dir": data_dir} if data_dir else {}
    # the env's own default catalog size is left implicit, so a warm start built by ``hero-gym warmstart``
    # (which passes only the -k arguments given) has the same cache key
    ws = {} if num_products == DEFAULT_NUM_PRODUCTS else {"num_products": num_products}
    return {
        "WebShop": EnvSetup("WebShop", "hero_gym/WebShop-v0", {**ws, "split": "train"}, {**ws, "split": "test"},
                            50, 200, 8),
        "TauRetail": EnvSetup("TauRetail", "hero_gym/TauRetail-v0", {**tau, "split": "train"},
                              {**tau, "split": "test"}, 30, 200, 10),
        "TauAirline": EnvSetup("TauAirline", "hero_gym/TauAirline-v0", {"data": "generated", "split": "train"},
                               {**tau, "split": "test"}, 30, 200, 10),
        "Lookup": EnvSetup("Lookup", "hero_gym/Lookup-v0", {}, {}, 20, 50, 4),
    }


ENV_SETUPS = tuple(_env_setups(None, 1000))


@dataclass
class Options:
    """Every setting of a benchmark run (a preset fills them; flags override)."""

    preset: str = "default"
    model: str = "smollm2"
    device: str | None = None
    warm_start: bool = True
    data_dir: str | None = None
    envs: list[str] = field(default_factory=lambda: ["WebShop"])
    methods: list[str] = field(default_factory=lambda: list(METHOD_ORDER))
    reference: str | None = "hero"
    budgets: list[int] = field(default_factory=lambda: [32, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_tasks: int | None = None      # None = the env's default
    max_turns: int | None = None       # None = the env's default
    num_products: int = DEFAULT_NUM_PRODUCTS
    max_new_tokens: int = 64
    group_size: int = 2
    tasks_per_update: int = 2
    lr: float = 3e-4
    tool_prompt: str = "compact"
    threads: int | None = None
    #: training runs in parallel, each in its own process with its own copy of the model (the warm start is
    #: built first, in the main process); ``1`` runs everything in this process
    workers: int = 1
    bootstrap: int = 2000
    #: per-env constructor kwargs added to both training and evaluation (e.g. WebShop's small-model
    #: observation options ``{"WebShop": {"max_results": 5, "instruction_once": True}}``)
    env_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: extra ``TrainConfig`` fields (only those the installed trainer has are passed)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    #: extra ``WarmStartConfig`` fields (only those the installed warm start has are passed)
    warm_start_overrides: dict[str, Any] = field(default_factory=dict)
    out: str = "runs/default"
    report_only: bool = False
    #: the settings a command line changed from the preset's values (shown next to the preset's name)
    changed: list[str] = field(default_factory=list)
    #: the settings given on the command line (``--report-only`` takes these from it, the rest from the run)
    given: list[str] = field(default_factory=list)


#: WebShop's small-model observation options (off in the env by default; see ``hero_gym/envs/webshop``):
#: the top 5 results per page and the instruction only in the first observation.
SMALL_MODEL_WEBSHOP = {"WebShop": {"max_results": 5, "instruction_once": True}}

#: The warm start the CPU presets share: 120 demonstrations + 1 DAgger round of 30 rollouts (~20 min on
#: 2 idle cores; figures in the README's "Warm start" section). No held-out evaluation of its own
#: (``eval_goals`` 0): the benchmark's base cell is that evaluation (the same greedy held-out goals).
CPU_WARM_START = {"episodes": 120, "noise": 0.1, "recovery_rounds": 1, "recovery_episodes": 30, "eval_goals": 0}

#: Presets. ``default`` is meant for ``make bench`` (target <= 40 min on 2 CPU cores from a fresh clone, warm
#: start included): two distillation methods against the warm-started base, one seed, one budget, two
#: worker processes - it shows the pipeline and the table, not a difference between methods. ``cpu`` is
#: every method with 3 seeds at a budget of 32 turns: a batch is tasks_per_update x group_size = 4 episodes
#: of at most 8 turns (WebShop; ~20 turns measured), so 32 turns buy 1 optimizer step. Measured here at
#: ~4.4 core-hours (the model reflector of HERO and its ablation, ~10 min per batch on one core, is most of
#: it): more than the 2.5 h target on 2 cores; see the README's "Results". Both presets use the same warm
#: start and the same 30 held-out goals, so ``cpu`` reuses a ``default`` run's cells when given the same
#: ``--out``. ``quick`` is a smoke test on a tiny random model. The README's "Results" section gives the
#: measured wall times.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"envs": ["WebShop"], "methods": [BASE, "envfb_sd", "hero_rules"], "reference": "hero_rules",
                "budgets": [32], "seeds": [0], "eval_tasks": 30, "env_kwargs": SMALL_MODEL_WEBSHOP,
                "warm_start_overrides": CPU_WARM_START, "workers": 2, "out": "runs/default"},
    "cpu": {"envs": ["WebShop"], "budgets": [32], "seeds": [0, 1, 2], "eval_tasks": 30,
            "env_kwargs": SMALL_MODEL_WEBSHOP, "warm_start_overrides": CPU_WARM_START, "workers": 2,
            "out": "runs/cpu"},
    "quick": {"model": "tiny", "warm_start": False, "envs": ["Lookup", "WebShop"], "budgets": [6, 12],
              "seeds": [0, 1], "eval_tasks": 3, "max_turns": 3, "num_products": 100, "max_new_tokens": 12,
              "group_size": 2, "tasks_per_update": 1, "threads": 1, "bootstrap": 500, "out": "runs/quick",
              # the model reflector of a random tiny model writes noise: keep it short
              "train_overrides": {"reflector_max_new_tokens": 24, "reflector_retries": 0},
              # with --warm-start: a token warm start (a few demonstrations, no recovery round)
              "warm_start_overrides": {"episodes": 4, "recovery_rounds": 0, "eval_goals": 2}},
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str = "hero-gym bench") -> argparse.ArgumentParser:
    """The benchmark's command line (shared by ``hero-gym bench`` and ``benchmarks/run_all.py``)."""
    ap = _Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="default: SmolLM2 warm-started, WebShop (make bench); cpu: WebShop + TauRetail, 3 seeds; "
                         "quick: tiny random model smoke test")
    ap.add_argument("--quick", action="store_true", help="same as --preset quick")
    ap.add_argument("--model", help="'smollm2' (embedded default), 'tiny' (random), or an HF id / local path")
    ap.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--warm-start", dest="warm_start", action="store_true", default=None,
                    help="start every method from the behaviour-cloned model (built once, cached)")
    ap.add_argument("--no-warm-start", dest="warm_start", action="store_false", help="start from the raw model")
    ap.add_argument("--data-dir", help="official Tau-bench data (default $HERO_GYM_TAUBENCH_DIR)")
    ap.add_argument("--envs", nargs="+", help=f"any of {list(ENV_SETUPS)}")
    ap.add_argument("--methods", nargs="+", help=f"any of {METHOD_ORDER}")
    ap.add_argument("--reference", help="the method compared with every other one (default: hero)")
    ap.add_argument("--budgets", nargs="+", type=int, help="training budgets in environment turns (nested)")
    ap.add_argument("--seeds", nargs="+", type=int, help="training seeds (>= 3 for the CI to mean much)")
    ap.add_argument("--eval-tasks", type=int, help="held-out tasks per env (0 = all)")
    ap.add_argument("--max-turns", type=int, help="turn cap per episode (default: per env)")
    ap.add_argument("--num-products", type=int, help="WebShop generated catalog size")
    ap.add_argument("--env-kwarg", action="append", metavar="ENV:KEY=VALUE",
                    help="env constructor argument for training and evaluation, e.g. WebShop:max_results=5 "
                         "(VALUE is JSON when it parses, else a string; repeatable)")
    ap.add_argument("--warm-start-config", action="append", metavar="KEY=VALUE",
                    help="a WarmStartConfig field for the warm start, e.g. episodes=60 (VALUE is JSON when it "
                         "parses, else a string; repeatable)")
    ap.add_argument("--max-new-tokens", type=int, help="tokens per action")
    ap.add_argument("--group-size", type=int, help="rollouts per task per update")
    ap.add_argument("--tasks-per-update", type=int, help="distinct tasks per update")
    ap.add_argument("--lr", type=float, help="learning rate of every method")
    ap.add_argument("--tool-prompt", choices=["full", "compact"], help="tool descriptions in the system prompt")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 when others share the CPU); with --workers, "
                                                "per worker (default: CPU cores // workers)")
    ap.add_argument("--workers", type=int, help="training runs in parallel processes (each loads its own model)")
    ap.add_argument("--bootstrap", type=int, help="bootstrap resamples of the paired CI")
    ap.add_argument("--out", help="output folder (relative to the current directory)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: rebuild tables and plots from the finished cells in --out")
    return ap


def parse_args(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> Options:
    """Options from a command line: the preset's values, then every flag given."""
    ap = parser or build_parser()
    a = ap.parse_args(list(argv) if argv is not None else None)
    preset = "quick" if a.quick else (a.preset or "default")
    if a.quick and a.preset not in (None, "quick"):
        ap.error("--quick and --preset are exclusive")
    o = Options(preset=preset, **copy.deepcopy(PRESETS[preset]))
    for f in dataclasses.fields(Options):
        v = getattr(a, f.name, None)
        if v is not None and f.name not in ("preset",):
            setattr(o, f.name, v)
    o.report_only = bool(a.report_only)
    o.given = [f.name for f in dataclasses.fields(Options) if getattr(a, f.name, None) is not None]
    o.given += [name for name, flag in (("env_kwargs", a.env_kwarg), ("warm_start_overrides", a.warm_start_config))
                if flag]
    setups = _env_setups(o.data_dir, o.num_products)
    for item in a.env_kwarg or []:
        env, sep, kv = item.partition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq or not key or env not in setups:
            ap.error(f"--env-kwarg wants ENV:KEY=VALUE with ENV one of {list(setups)}, got {item!r}")
        o.env_kwargs = {**o.env_kwargs, env: {**o.env_kwargs.get(env, {}), key: json_or_str(value)}}
    for item in a.warm_start_config or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            ap.error(f"--warm-start-config wants KEY=VALUE, got {item!r}")
        o.warm_start_overrides = {**o.warm_start_overrides, key: json_or_str(value)}
    bad_envs = [e for e in o.envs if e not in setups]
    if bad_envs:
        ap.error(f"unknown env(s) {bad_envs}; choose from {list(setups)}")
    bad = [m for m in o.methods if m not in METHOD_ORDER and m not in available_methods()]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {METHOD_ORDER}")
    if not o.report_only:
        missing = [m for m in o.methods if m not in available_methods()]
        if missing and a.methods:
            ap.error(f"the installed trainer cannot run {missing}; it provides {available_methods()}")
        o.methods = [m for m in o.methods if m in available_methods()]
    if BASE not in o.methods:
        o.methods = [BASE, *o.methods]
    if o.reference not in o.methods:
        if a.reference:
            ap.error(f"reference method {o.reference!r} is not among the methods {o.methods}")
        # without HERO in the run there is nothing to compare against (no CI column)
        o.reference = "hero_rules" if "hero_rules" in o.methods else None
    if any(b <= 0 for b in o.budgets) or len(set(o.budgets)) != len(o.budgets):
        ap.error(f"budgets must be distinct positive turn counts, got {o.budgets}")
    o.budgets = sorted(o.budgets)
    if not o.seeds:
        ap.error("give at least one seed")
    if o.workers < 1:
        ap.error(f"--workers must be >= 1, got {o.workers}")
    o.changed = changed_from_preset(o)
    return o


def changed_from_preset(o: Options) -> list[str]:
    """The settings of ``o`` that differ from its preset's (what a report names next to the preset)."""
    ref = Options(preset=o.preset, **copy.deepcopy(PRESETS[o.preset]))
    skip = ("preset", "report_only", "out", "changed", "given", "workers")   # workers change speed, not results
    return [f.name for f in dataclasses.fields(Options)
            if f.name not in skip and getattr(o, f.name) != getattr(ref, f.name)]


def preset_label(o: dict[str, Any]) -> str:
    """``"cpu preset"``, or ``"cpu preset, changed: budgets, seeds"`` when flags overrode its settings."""
    changed = o.get("changed") or []
    return f"{o['preset']} preset" + (f", changed: {', '.join(changed)}" if changed else "")


def _setups(o: Options) -> dict[str, EnvSetup]:
    out = {}
    for name, s in _env_setups(o.data_dir, o.num_products).items():
        extra = o.env_kwargs.get(name, {})
        if extra:
            s = dataclasses.replace(s, train_kwargs={**s.train_kwargs, **extra}, eval_kwargs={**s.eval_kwargs, **extra})
        if o.eval_tasks is not None:
            s = dataclasses.replace(s, eval_tasks=o.eval_tasks)
        if o.max_turns is not None:
            s = dataclasses.replace(s, max_turns=o.max_turns)
        out[name] = s
    return out


# ============================================================================ provenance / fingerprints
def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_CODE_FP: str | None = None


def code_fingerprint() -> str:
    """Hash of the installed package's Python sources (core, envs, agents), this module excluded:
    a cell computed by other code is not reused."""
    global _CODE_FP
    if _CODE_FP is None:
        h = hashlib.sha256()
        for pkg in ("hero_gym", "hero_gym.envs", "hero_gym.agents"):
            root = Path(importlib.import_module(pkg).__file__).parent
            for f in sorted(root.rglob("*.py")):
                if f.resolve() == Path(__file__).resolve() or "__pycache__" in f.parts:
                    continue
                if pkg == "hero_gym" and f.relative_to(root).parts[0] in ("envs", "agents"):
                    continue
                h.update(f"{pkg}:{f.relative_to(root)}".encode())
                h.update(f.read_bytes())
        _CODE_FP = h.hexdigest()[:16]
    return _CODE_FP


def _files_fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def data_source(setup: EnvSetup, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Which data an env reads: official/generated, path and a content fingerprint."""
    import hero_gym

    env = hero_gym.make(setup.env_id, **kwargs)
    try:
        u = env.unwrapped
        ds = getattr(u, "dataset", None)
        if ds is not None:   # Tau-bench
            info = {"source": ds.source, "ident": ds.ident}
            if ds.source == "official":
                info.update(path=ds.ident, fingerprint=_files_fingerprint(Path(ds.ident)))
            else:
                info["fingerprint"] = _sha([ds.ident, sorted((k, len(v)) for k, v in ds.tasks.items())])
            return info
        if getattr(u, "catalog", None) is not None:
            cat = u.catalog
            src = "official" if kwargs.get("data_dir") else "generated"
            info = {"source": src, "products": len(getattr(cat, "products", []) or []),
                    "goals": len(getattr(cat, "goals", []) or [])}
            if kwargs.get("data_dir"):
                info.update(path=str(Path(kwargs["data_dir"]).resolve()),
                            fingerprint=_files_fingerprint(Path(kwargs["data_dir"])))
            else:
                info["fingerprint"] = _sha([kwargs, [g.instruction for g in cat.goals[:200]]])
            return info
        return {"source": "generated", "fingerprint": _sha([setup.env_id, kwargs])}
    finally:
        env.close()


def git_commit() -> str:
    """The source checkout's commit (with ``+dirty`` if it has uncommitted changes), or a note."""
    src = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            raise OSError
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"installed package hero-gym {version('hero-gym')} (not a git checkout)"
        except PackageNotFoundError:
            return "unknown"


def hardware() -> dict[str, Any]:
    import torch

    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "platform": platform.platform()}


# ============================================================================ models
class ModelSource:
    """The base weights per env (warm-started when asked), loaded once; each run gets a deep copy
    with a fresh LoRA adapter."""

    def __init__(self, opts: Options):
        self.opts = opts
        self._bases: dict[str, tuple[Any, Any]] = {}
        self.warm_start_info: dict[str, dict[str, Any]] = {}

    def base(self, setup: EnvSetup) -> tuple[Any, Any]:
        key = setup.name if self.opts.warm_start else "_raw"
        if key not in self._bases:
            if self.opts.warm_start:
                self._bases[key] = self._warm_started(setup)
            else:
                from hero_gym.agents import load_named_model

                self._bases[key] = load_named_model(self.opts.model, device=self.opts.device)
        return self._bases[key]

    def _warm_started(self, setup: EnvSetup) -> tuple[Any, Any]:
        """The warm start for this env (``hero_gym.agents.warmstart``: built once per setting, cached),
        or the raw model, recorded as such, for an env the warm start has no expert for."""
        try:
            ws = importlib.import_module("hero_gym.agents.warmstart")
        except ImportError as e:
            raise SystemExit("warm start requested but this install has no hero_gym.agents.warmstart; "
                             "pass --no-warm-start") from e
        # the same env settings, turn cap, reply cap and tool prompt as the runs that start from it
        wanted = {"env_id": setup.env_id, "env_kwargs": {k: v for k, v in setup.train_kwargs.items() if k != "split"},
                  "max_new_tokens": self.opts.max_new_tokens, "max_turns": setup.max_turns,
                  "eval_max_turns": setup.max_turns, "tool_prompt": self.opts.tool_prompt, "progress": True,
                  **self.opts.warm_start_overrides}
        names = {f.name for f in dataclasses.fields(ws.WarmStartConfig)}
        unknown = sorted(set(self.opts.warm_start_overrides) - names)
        if unknown:
            raise SystemExit(f"--warm-start-config: unknown WarmStartConfig field(s) {unknown}; valid: {sorted(names)}")
        t0 = time.perf_counter()
        try:
            cfg = ws.WarmStartConfig(**{k: v for k, v in wanted.items() if k in names})
            path = ws.warm_start(cfg, base=self.opts.model, device=self.opts.device)
        except (ValueError, NotImplementedError) as e:
            if "expert" not in str(e).lower() and "env" not in str(e).lower():
                raise
            self.warm_start_info[setup.name] = {"path": None, "unavailable": str(e)}
            from hero_gym.agents import load_named_model

            return load_named_model(self.opts.model, device=self.opts.device)
        from hero_gym.agents import load_model

        model, tok = load_model(str(path), device=self.opts.device)
        report = ws.read_report(path) if hasattr(ws, "read_report") else {}
        self.warm_start_info[setup.name] = {
            "path": str(path), "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "report": {k: v for k, v in report.items() if k in ("eval", "train_seconds", "total_seconds")},
            "seconds_this_run": time.perf_counter() - t0}
        return model, tok

    def policy(self, setup: EnvSetup, seed: int) -> Any:
        """A fresh trainable policy (deep copy of the base, new LoRA initialised from ``seed``)."""
        import torch

        from hero_gym.agents import HFPolicy

        base, tok = self.base(setup)
        torch.manual_seed(seed)
        return HFPolicy(copy.deepcopy(base), tok, device=self.opts.device)

    def release(self) -> None:
        """Drop the loaded base models (the warm-start records stay)."""
        self._bases.clear()

    def identity(self, setup: EnvSetup) -> dict[str, Any]:
        """What the starting weights are, for fingerprints (the warm start's settings, not its timing).
        With a warm start this loads (or builds) it first, so the answer does not depend on call order."""
        ident: dict[str, Any] = {"model": self.opts.model, "warm_start": self.opts.warm_start}
        if self.opts.warm_start:
            if setup.name not in self.warm_start_info:
                self.base(setup)
            ident["warm_start_config"] = self.warm_start_info[setup.name].get("config")
        return ident


# ============================================================================ cells
@dataclass(frozen=True)
class Run:
    """One training run: (env, method, seed), trained to the largest budget."""

    env: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.env}__{self.method}__s{self.seed}"


def cell_key(env: str, method: str, budget: int, seed: int | None) -> str:
    return f"{env}__{method}__b{budget}" + ("" if seed is None else f"__s{seed}")


def _per_task(episodes: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for ep in episodes:
        turns = len(ep.turns)
        valid = sum(t.action_error is None for t in ep.turns)
        rows.append({"task": ep.options.get("task_index", ep.task_id), "success": float(bool(ep.success)),
                     "score": float(ep.total_reward), "turns": turns, "valid_turns": valid})
    return rows


def _summarise(per_task: list[dict[str, Any]]) -> dict[str, Any]:
    n = max(1, len(per_task))
    turns = sum(r["turns"] for r in per_task)
    return {"success_rate": sum(r["success"] for r in per_task) / n,
            "mean_score": sum(r["score"] for r in per_task) / n,
            "mean_turns": turns / n,
            "valid_action_rate": (sum(r["valid_turns"] for r in per_task) / turns) if turns else None,
            "n_eval_episodes": len(per_task)}


class Bench:
    """Runs the matrix of one :class:`Options` into ``out``."""

    def __init__(self, opts: Options, out: Path, log: Callable[[str], None]):
        self.opts, self.out, self.log = opts, out, log
        self.setups = _setups(opts)
        self.source = ModelSource(opts)
        self.reused = 0
        self.rerun_stale = 0
        self._n_eval_cache: dict[str, int] = {}

    # ------------------------------------------------------------------ fingerprints
    def _n_eval(self, setup: EnvSetup) -> int:
        """Held-out tasks evaluated: ``eval_tasks``, or every task of the eval split when it is 0."""
        if setup.eval_tasks:
            return setup.eval_tasks
        if setup.name not in self._n_eval_cache:
            import hero_gym

            env = hero_gym.make(setup.env_id, **setup.eval_kwargs)
            try:
                n = env.unwrapped.num_tasks()
            finally:
                env.close()
            if not n:
                raise SystemExit(f"{setup.env_id} does not index its tasks: pass --eval-tasks N (N > 0)")
            self._n_eval_cache[setup.name] = int(n)
        return self._n_eval_cache[setup.name]

    def eval_settings(self, setup: EnvSetup) -> dict[str, Any]:
        return {"env_id": setup.env_id, "eval_kwargs": setup.eval_kwargs, "eval_tasks": self._n_eval(setup),
                "max_turns": setup.max_turns, "max_new_tokens": self.opts.max_new_tokens,
                "tool_prompt": self.opts.tool_prompt, "greedy": True}

    def train_settings(self, setup: EnvSetup, run: Run) -> dict[str, Any]:
        o = self.opts
        return {"env_id": setup.env_id, "train_kwargs": setup.train_kwargs, "train_tasks": setup.train_tasks,
                "max_turns": setup.max_turns, "method": run.method, "seed": run.seed,
                "trainer": _train_config_fields(run.method), "group_size": o.group_size,
                "tasks_per_update": o.tasks_per_update, "lr": o.lr, "max_new_tokens": o.max_new_tokens,
                "tool_prompt": o.tool_prompt, "overrides": self.train_overrides()}

    def train_overrides(self) -> dict[str, Any]:
        from hero_gym.agents.trainer import TrainConfig

        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return {k: v for k, v in self.opts.train_overrides.items() if k in names}

    def run_fingerprint(self, setup: EnvSetup, run: Run) -> str:
        return _sha({"code": code_fingerprint(), "weights": self.source.identity(setup),
                     "device": self.opts.device, "train": self.train_settings(setup, run)})

    def eval_fingerprint(self, setup: EnvSetup, origin: str, snapshot_turns: int) -> str:
        return _sha({"code": code_fingerprint(), "weights": self.source.identity(setup), "origin": origin,
                     "snapshot_turns": snapshot_turns, "eval": self.eval_settings(setup), "device": self.opts.device})

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, policy: Any, setup: EnvSetup) -> tuple[list[Any], float]:
        from hero_gym.agents.trainer import evaluate

        n = self._n_eval(setup)
        t0 = time.perf_counter()
        # Reset seeds depend on the goal only: every method and seed plays the same episodes.
        ev = evaluate(policy, setup.env_id, setup.eval_kwargs, task_indices=list(range(n)),
                      seeds=[100_000 + i for i in range(n)], temperature=0.0, max_turns=setup.max_turns,
                      max_new_tokens=self.opts.max_new_tokens, num_envs=n, tool_prompt=self.opts.tool_prompt)
        return ev.episodes, time.perf_counter() - t0

    def _cached(self, cdir: Path, fp: str) -> dict[str, Any] | None:
        f = cdir / "result.json"
        if not f.exists():
            return None
        res = json.loads(f.read_text())
        if res.get("fingerprint") == fp:
            self.reused += 1
            res["reused"] = True
            return res
        self.rerun_stale += 1
        return None

    def _write_cell(self, cdir: Path, result: dict[str, Any], episodes: Sequence[Any]) -> dict[str, Any]:
        from hero_gym.records import save_jsonl

        cdir.mkdir(parents=True, exist_ok=True)
        save_jsonl(list(episodes), cdir / "eval_episodes.jsonl")
        tmp = cdir / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, cdir / "result.json")
        result["reused"] = False
        return result

    def base_cell(self, env: str) -> dict[str, Any]:
        setup = self.setups[env]
        cdir = self.out / "cells" / cell_key(env, BASE, 0, None)
        fp = self.eval_fingerprint(setup, "base", 0)
        cached = self._cached(cdir, fp)
        if cached is not None:
            return cached
        # a fresh LoRA starts at zero (B = 0), so this is exactly the base model's behaviour
        policy = self.source.policy(setup, 0)
        episodes, secs = self.evaluate(policy, setup)
        per_task = _per_task(episodes)
        result = {"env": env, "method": BASE, "budget": 0, "seed": None, "snapshot_turns": 0, "optimizer_steps": 0,
                  **_summarise(per_task), "per_task": per_task, "eval_seconds": secs, "wall_seconds": secs,
                  "fingerprint": fp}
        del policy
        return self._write_cell(cdir, result, episodes)

    def _base_episodes(self, env: str) -> list[Any]:
        """The base cell's evaluation episodes (the cell is computed first when missing)."""
        from hero_gym.records import load_jsonl

        f = self.out / "cells" / cell_key(env, BASE, 0, None) / "eval_episodes.jsonl"
        if not f.exists():
            self.base_cell(env)
        return load_jsonl(f)

    def _valid_cell(self, setup: EnvSetup, rfp: str, budget: int, cdir: Path) -> dict[str, Any] | None:
        """A finished cell of this run whose fingerprint matches (checked against its own snapshot)."""
        f = cdir / "result.json"
        if not f.exists():
            return None
        res = json.loads(f.read_text())
        if res.get("budget") == budget and res.get("fingerprint") == self.eval_fingerprint(
                setup, rfp, int(res.get("snapshot_turns", -1))):
            return res
        return None

    def _run_meta(self, rdir: Path, rfp: str) -> dict[str, Any] | None:
        """The run record if ``rdir`` holds this fingerprint's run; a run by other code or settings is removed."""
        meta_f, fp_f = rdir / "run.json", rdir / "fingerprint"
        meta = json.loads(meta_f.read_text()) if meta_f.exists() else None
        ours = (fp_f.exists() and fp_f.read_text() == rfp) or (meta is not None and meta.get("fingerprint") == rfp)
        if rdir.exists() and not ours:
            shutil.rmtree(rdir)   # trained (or half-trained) by other code or settings: start over
            return None
        return meta if meta is not None and meta.get("fingerprint") == rfp else None

    def run_cells(self, run: Run, on_cell: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Train one (env, method, seed) run to the largest budget and evaluate every budget's snapshot,
        reusing whatever ``out`` already holds under the same fingerprint. Returns the run's record."""
        setup = self.setups[run.env]
        rdir = self.out / "runs" / run.key
        rfp = self.run_fingerprint(setup, run)
        top = max(self.opts.budgets)
        cdirs = {b: self.out / "cells" / cell_key(run.env, run.method, b, run.seed) for b in self.opts.budgets}
        done = {b: r for b in self.opts.budgets if (r := self._valid_cell(setup, rfp, b, cdirs[b])) is not None}
        self.rerun_stale += sum((cdirs[b] / "result.json").exists() for b in self.opts.budgets if b not in done)
        meta = self._run_meta(rdir, rfp)
        policy = None
        if len(done) < len(self.opts.budgets) and (meta is None or meta["turn_budget"] < top):
            from hero_gym.agents.trainer import TrainConfig

            t0 = time.perf_counter()
            rdir.mkdir(parents=True, exist_ok=True)
            (rdir / "fingerprint").write_text(rfp)   # an interrupted run resumes only under the same fingerprint
            policy = self.source.policy(setup, run.seed)
            cfg = TrainConfig(
                env_id=setup.env_id, env_kwargs=setup.train_kwargs, turn_budget=top, max_turns=setup.max_turns,
                task_indices=list(range(setup.train_tasks)), tasks_per_update=self.opts.tasks_per_update,
                group_size=self.opts.group_size, max_new_tokens=self.opts.max_new_tokens, lr=self.opts.lr,
                checkpoint_dir=str(rdir / "train"), tool_prompt=self.opts.tool_prompt, seed=run.seed,
                progress=False, **{**self.train_overrides(), **_train_config_fields(run.method)})
            snaps, metrics = train_with_snapshots(policy, cfg)
            meta = {**asdict(run), "fingerprint": rfp, "turn_budget": top,
                    "train_seconds": (meta["train_seconds"] if meta else 0.0) + time.perf_counter() - t0,
                    "snapshots": {str(t): str(p.relative_to(rdir)) for t, p in sorted(snaps.items())},
                    "metrics": [{k: m[k] for k in ("update", "iteration", "optimizer_steps", "turns_used",
                                                   "success_rate", "mean_reward", "tokens_trained",
                                                   "tokens_trained_total", "action_tokens") if k in m}
                                for m in metrics]}
            (rdir / "run.json").write_text(json.dumps(meta, indent=2))
            self.log(f"trained {run.key}: {steps_at(meta['metrics'], meta['metrics'][-1]['turns_used']) if metrics else 0}"
                     f" optimizer steps, {metrics[-1]['turns_used'] if metrics else 0} turns in "
                     f"{time.perf_counter() - t0:.0f} s")
        elif meta is not None:
            self.log(f"training run {run.key} reused from {rdir}")
        else:   # every cell is reused but the run folder is gone: keep what the cells recorded
            first = next(iter(done.values()))
            meta = {**asdict(run), "fingerprint": rfp, "turn_budget": top, "metrics": [],
                    "train_seconds": float(first.get("run_train_seconds", 0.0)), "snapshots": {}}
            self.log(f"training run {run.key}: every cell reused (run folder not kept)")
        snaps = {int(t): rdir / p for t, p in meta["snapshots"].items()}
        evaluated: dict[int, list[Any]] = {}   # snapshot turns -> its episodes (budgets sharing a snapshot)
        for budget in self.opts.budgets:
            if budget in done:
                res = {**done[budget], "reused": True}
                self.reused += 1
            else:
                turns, path = snapshot_for_budget(snaps, budget)
                if turns in evaluated:
                    # a smaller budget read the same snapshot (no update in between): same weights, same answer
                    episodes, secs = evaluated[turns], 0.0
                elif steps_at(meta["metrics"], turns) == 0:
                    # no optimizer step yet: the weights are the base's (a fresh LoRA adds exactly 0), so
                    # its greedy evaluation is the base cell's; reuse it instead of replaying it
                    episodes, secs = self._base_episodes(run.env), 0.0
                else:
                    if policy is None:
                        policy = self.source.policy(setup, run.seed)
                    load_snapshot(policy, path)
                    episodes, secs = self.evaluate(policy, setup)
                evaluated[turns] = episodes
                per_task = _per_task(episodes)
                res = self._write_cell(cdirs[budget], {
                    "env": run.env, "method": run.method, "budget": budget, "seed": run.seed,
                    "snapshot_turns": turns, "optimizer_steps": steps_at(meta["metrics"], turns),
                    **_summarise(per_task), "per_task": per_task, "eval_seconds": secs,
                    "run_train_seconds": meta["train_seconds"],
                    # a cell's share of its run's training time: the budget's fraction of the turns trained
                    "wall_seconds": secs + meta["train_seconds"] * turns / max(1, top),
                    "fingerprint": self.eval_fingerprint(setup, rfp, turns)}, episodes)
            on_cell(res)
        del policy
        return meta


# ============================================================================ report
def _fmt(m: float, se: float = float("nan"), pct: bool = False) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "–"
    s = 100.0 if pct else 1.0
    digits = 1 if pct else 2
    return f"{m * s:.{digits}f}" + ("" if se is None or math.isnan(se) else f" ± {se * s:.{digits}f}")


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


_STYLE = {BASE: ("#7f7f7f", "s", ":"), "grpo": ("#1f77b4", "o", "-"), "envfb_sd": ("#ff7f0e", "v", "-"),
          "full_demo": ("#2ca02c", "^", "-"), "hero_rules": ("#9467bd", "D", "--"), "hero": ("#d62728", "*", "-"),
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
                 f"tasks — {preset_label(o)}", fontsize=10)
    if notes:
        fig.text(0.01, 0.085, "Identical series (held-out panels: offset along x to stay visible): " + "; ".join(notes),
                 fontsize=7, color="#444", wrap=True)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ============================================================================ progress
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


# ============================================================================ main
#: what ``--report-only`` takes from the command line instead of the run's provenance
REPORT_SELECTION = ("envs", "methods", "budgets", "seeds", "reference", "bootstrap")


def _collect_finished(out: Path, opts: Options) -> tuple[list[dict], list[dict]]:
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
        emit("cell", what, _cell_line(c, opts))
        return [c], None
    cells: list[dict[str, Any]] = []
    bench.log = lambda text: emit("train", what.env, text)

    def on_cell(res: dict[str, Any]) -> None:
        cells.append(res)
        emit("cell", what.env, _cell_line(res, opts))

    meta = bench.run_cells(what, on_cell)
    return cells, meta


_WORKER: dict[str, Any] = {}


def worker_threads(threads: int | None, workers: int, cpu_count: int | None) -> int:
    """Torch threads of each worker process: ``--threads`` when given, else an equal share of the cores."""
    return threads or max(1, (cpu_count or 1) // workers)


def _worker_init(opts: Options, out: str, events: Any) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()   # N workers' weight-loading bars would interleave with the matrix bar

    torch.set_num_threads(worker_threads(opts.threads, opts.workers, os.cpu_count()))
    _WORKER["bench"] = Bench(opts, Path(out), log=lambda s: None)
    _WORKER["events"] = events


def _worker_job(job: Job) -> tuple[list[dict[str, Any]], dict[str, Any] | None, int, int]:
    bench = _WORKER["bench"]
    bench.reused = bench.rerun_stale = 0
    cells, meta = run_job(bench, job, lambda kind, env, text: _WORKER["events"].put((kind, env, text)))
    return cells, meta, bench.reused, bench.rerun_stale


def _run_parallel(opts: Options, out: Path, jobs: Sequence[Job], on_event: Callable[[str, str, str], None],
                  counts: Bench) -> dict[int, tuple[list[dict[str, Any]], dict[str, Any] | None]]:
    """Run ``jobs`` on ``opts.workers`` spawned processes (each its own model copy and torch threads),
    forwarding their progress events to ``on_event`` as they come and adding their reused/recomputed
    cell counts to ``counts``. Returns each job's result by its index in ``jobs``. A failed job stops the
    others and re-raises; cells finished before it stay in ``out`` for the next run to reuse."""
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    results: dict[int, tuple[list[dict[str, Any]], dict[str, Any] | None]] = {}
    pool = ProcessPoolExecutor(max_workers=min(opts.workers, len(jobs)), mp_context=ctx,
                               initializer=_worker_init, initargs=(opts, str(out), events))
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
                cells, meta, reused, stale = fut.result()
                results[i] = (cells, meta)
                counts.reused += reused
                counts.rerun_stale += stale
        drain(0.2)
        ok = True
    finally:
        if not ok:   # stop the other workers now rather than after their runs
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
        pool.shutdown(wait=ok, cancel_futures=True)
    return results


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
        prov_f = out / "results.json"
        if not prov_f.exists():
            raise SystemExit(f"--report-only: {prov_f} is missing, so the run's provenance is unknown")
        prov = json.loads(prov_f.read_text())["provenance"]
        # the run's settings, except the matrix the command line selects (e.g. --seeds 0 1 2 to report the
        # cells that several invocations, one per seed, wrote into the same folder)
        chosen = {k: getattr(opts, k) for k in REPORT_SELECTION if k in opts.given}
        kept = {k: v for k, v in prov["options"].items() if k not in ("out", "report_only", "changed", "given")}
        opts = Options(**{**asdict(opts), **kept, **chosen})
        opts.changed = changed_from_preset(opts)
        cells, runs = _collect_finished(out, opts)
        if not cells:
            raise SystemExit(f"--report-only: no finished cells in {out} match its options")
        warm = sum(v.get("seconds_this_run", 0.0) for v in prov.get("warm_start", {}).values())
        prov = {**prov, "options": asdict(opts), "report_only": True,
                "wall_seconds": warm + sum(r["train_seconds"] for r in runs) + sum(c["eval_seconds"] for c in cells)}
        text = report(out, opts, cells, runs, prov)
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

    bar.line(f"{len(opts.envs)} env(s) x {len(opts.methods)} methods x budgets {opts.budgets} x seeds {opts.seeds} "
             f"-> {len(runs_plan)} training runs" + (f" on {opts.workers} workers" if opts.workers > 1 else "")
             + f"; output {out}")
    try:
        for env in opts.envs:
            s = bench.setups[env]
            setups_prov[env] = {"env_id": s.env_id, "train_kwargs": s.train_kwargs, "eval_kwargs": s.eval_kwargs,
                                "eval_tasks": bench._n_eval(s), "train_tasks": s.train_tasks,
                                "max_turns": s.max_turns, "data": data_source(s, s.eval_kwargs),
                                "train_data": data_source(s, s.train_kwargs)}
            if opts.warm_start:
                bar.line(f"{env}: warm start (built once per setting, then read from the cache)")
            if opts.workers > 1:
                bench.source.base(s)   # build the warm starts here, once, before the workers read them
        if opts.workers > 1:
            bench.source.release()
            done = _run_parallel(opts, out, jobs, on_event, bench)
        else:
            for i, job in enumerate(jobs):
                done[i] = run_job(bench, job, on_event)
    finally:
        bar.close()
    cells = [c for i in range(len(jobs)) for c in done[i][0]]
    runs = [meta for i in range(len(jobs)) if (meta := done[i][1]) is not None]
    invocation = time.perf_counter() - t_start
    warm_secs = sum(v.get("seconds_this_run", 0.0) for v in bench.source.warm_start_info.values())
    prov = {
        "options": asdict(opts), "out": str(out), "envs": setups_prov,
        "warm_start": bench.source.warm_start_info, "git_commit": git_commit(), "code_fingerprint": code_fingerprint(),
        "hardware": {**hardware(), "device": opts.device or "auto"},
        "command": " ".join(sys.argv), "reused_cells": bench.reused, "stale_cells_rerun": bench.rerun_stale,
        "invocation_seconds": invocation,
        # compute behind the table: every run's training plus every evaluation (reused ones keep their time)
        "wall_seconds": warm_secs + sum(r["train_seconds"] for r in runs) + sum(c["eval_seconds"] for c in cells),
    }
    text = report(out, opts, cells, runs, prov)
    print(text)
    if bench.reused:
        print(f"{bench.reused} cells reused from {out} (original wall time kept)")
    if bench.rerun_stale:
        print(f"{bench.rerun_stale} cells in {out} had another code/config fingerprint and were recomputed")
    print(f"wrote {out} in {invocation / 60:.1f} min")
    return {"out": str(out), "cells": cells, "runs": runs, "provenance": prov}


def _cell_line(c: dict[str, Any], opts: Options) -> str:
    who = f"{c['env']} {method_label(c['method'], opts.warm_start)}"
    where = "start" if c["method"] == BASE else f"budget {c['budget']} seed {c['seed']} (snapshot at {c['snapshot_turns']} turns, {c['optimizer_steps']} steps)"
    va = c.get("valid_action_rate")
    return (f"{who} {where}: success {100 * c['success_rate']:.0f}%, score {c['mean_score']:.2f}, "
            f"valid {'–' if va is None else f'{100 * va:.0f}%'}, turns {c['mean_turns']:.1f}"
            + (" (reused)" if c.get("reused") else f" ({c['eval_seconds']:.0f} s eval)"))
