"""Benchmark settings: environments and their splits, methods, presets and the command line.

A preset fills :class:`Options`; flags override it (:func:`parse_args`). ``--help`` shows the package
docstring of :mod:`hero_gym.agents.bench`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hero_gym.cli import json_or_str
from hero_gym.envs.webshop.catalog import DEFAULT_NUM_PRODUCTS

from ..methods import METHODS

__all__ = ["BASE", "CPU_WARM_START", "ENV_SETUPS", "EnvSetup", "FAIR_METHODS", "METHOD_ORDER", "Options", "PRESETS",
           "SMALL_MODEL_WEBSHOP", "available_methods", "build_parser", "changed_from_preset", "method_label",
           "parse_args", "preset_label", "setups_for", "worker_threads"]

BASE = "base"
#: Methods in table order; "base" is the (warm-started) starting point every other method trains from.
METHOD_ORDER = [BASE, *METHODS]
#: The methods a run includes unless ``--methods`` says otherwise: every one but the privileged ceilings
#: (``MethodSpec.oracle``: they read the env's oracle, so they are asked for by name)
FAIR_METHODS = [m for m in METHOD_ORDER if m == BASE or not METHODS[m].oracle]


def method_label(method: str, warm_start: bool = False) -> str:
    """Human-readable method name for tables and plots."""
    if method == BASE:
        return "Warm-started base" if warm_start else "Base"
    return METHODS[method].label if method in METHODS else method


def available_methods() -> list[str]:
    """Every method the benchmark can run, in table order (the base first)."""
    return list(METHOD_ORDER)


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
    demo_max_chars: int = 2000  # full-demo's demonstration clip (Tau-bench's demonstrations are long)


#: Tau-bench's full-demo clip: a gold demonstration of 10 calls with their JSON results needs more than the
#: default 2000 characters (the notes keep each observation's first 200 characters either way)
TAU_DEMO_MAX_CHARS = 6000


def _env_setups(data_dir: str | None, num_products: int) -> dict[str, EnvSetup]:
    """Train/eval splits: Tau retail trains on the official train split and is evaluated on test;
    Tau airline (whose official data has only a test split) trains on generated airline tasks;
    WebShop trains on its training goals and is evaluated on its test goals; Lookup's 16-item table is split
    in halves: 8 training items, 8 held-out items (every index in range)."""
    tau = {"data_dir": data_dir} if data_dir else {}
    # the env's own default catalog size is left implicit, so a warm start built by ``hero-gym warmstart``
    # (which passes only the -k arguments given) has the same cache key
    ws = {} if num_products == DEFAULT_NUM_PRODUCTS else {"num_products": num_products}
    return {
        "WebShop": EnvSetup("WebShop", "hero_gym/WebShop-v0", {**ws, "split": "train"}, {**ws, "split": "test"},
                            50, 200, 8),
        "TauRetail": EnvSetup("TauRetail", "hero_gym/TauRetail-v0", {**tau, "split": "train"},
                              {**tau, "split": "test"}, 30, 200, 10, demo_max_chars=TAU_DEMO_MAX_CHARS),
        "TauAirline": EnvSetup("TauAirline", "hero_gym/TauAirline-v0", {"data": "generated", "split": "train"},
                               {**tau, "split": "test"}, 30, 200, 10, demo_max_chars=TAU_DEMO_MAX_CHARS),
        "Lookup": EnvSetup("Lookup", "hero_gym/Lookup-v0", {"num_items": 16, "split": "train"},
                           {"num_items": 16, "split": "test"}, 8, 8, 4),
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
    methods: list[str] = field(default_factory=lambda: list(FAIR_METHODS))
    reference: str | None = "hero"
    budgets: list[int] = field(default_factory=lambda: [32, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_tasks: int | None = None      # None = the env's default
    max_turns: int | None = None       # None = the env's default
    num_products: int = DEFAULT_NUM_PRODUCTS
    max_new_tokens: int = 64
    #: rollouts per task: GRPO's group (with 2, a group rarely shows a reward difference)
    group_size: int = 4
    #: tasks per batch (>= 2: the shuffled ablations draw their donors from other tasks of the batch)
    tasks_per_update: int = 2
    lr: float = 3e-4
    tool_prompt: str = "compact"
    threads: int | None = None
    #: training runs in parallel, each in its own process with its own copy of the model (the warm start is
    #: built first, in the main process); ``1`` runs everything in this process
    workers: int = 1
    #: who generates rollouts, evaluation episodes and the model reflector's text: ``"hf"`` (transformers) or
    #: ``"vllm"`` (one vLLM engine per worker next to the trained model; GPU only, see docs/gpu.md)
    rollout: str = "hf"
    #: evaluation episodes run at once (their KV caches live side by side); ``None`` = every eval task at once
    eval_slots: int | None = None
    #: weight snapshots: after ``"every"`` iteration, or only where the ``"budgets"`` read them (bf16 on CUDA)
    snapshots: str = "every"
    bootstrap: int = 2000
    #: episodes of the report's "Mechanism" section (the probe on each env's base model; 0 = no section)
    mechanism_episodes: int = 0
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
#: start included): env-feedback SD, HERO (rules) and its shuffled-diagnoses ablation (no model reflector:
#: the settle-it control costs one more run) against the warm-started base, one seed, one budget, two
#: worker processes - it shows the pipeline and the table, not a difference between methods. ``cpu`` is
#: every method with 3 seeds at a budget of 32 turns. In both a batch is tasks_per_update x group_size =
#: 2 x 4 = 8 episodes of at most 8 turns (WebShop; ~40 turns), so budget 32 is the first batch (the model
#: at B is the first snapshot at or past B): one optimizer step. The ``cpu`` tables in docs/results were
#: produced before the fair-comparison fixes (groups of 2, a batch of 4 episodes). Both presets use the
#: same warm start and the same 30 held-out goals, so ``cpu`` reuses a ``default`` run's cells when given
#: the same ``--out``. ``quick`` is a smoke test on a tiny random model. The README's "Results" section
#: gives the measured wall times.
#: ``paper``: the GPU preset (docs/gpu.md). Every method, three seeds, groups of 8 (tasks_per_update 4: a
#: batch of 32 episodes), the envs as the originals define them (no small-model options, full tool schemas,
#: 256-token replies), a 7B instruct model without a warm start, one worker process per visible GPU
#: (``workers`` 0 = the GPU count), at most 32 evaluation episodes at once, snapshots only at the budgets.
#: The budgets are this project's choice (about 8, 16 and 32 optimizer steps at ~8 turns per episode), not
#: figures from a paper.
PAPER = {"model": "Qwen/Qwen2.5-7B-Instruct", "device": "cuda", "warm_start": False,
         "envs": ["TauRetail", "TauAirline", "WebShop"], "budgets": [2048, 4096, 8192], "seeds": [0, 1, 2],
         "eval_tasks": 0, "group_size": 8, "tasks_per_update": 4, "max_new_tokens": 256, "tool_prompt": "full",
         "lr": 1e-4, "workers": 0, "eval_slots": 32, "snapshots": "budgets", "out": "runs/paper"}

#: ``cpu-long``: the experiment sized to tell the methods apart on 2 CPU cores (docs/results/cpu-long): the
#: ``cpu`` preset's warm start and WebShop options; GRPO, env-feedback SD, HERO (rules), its shuffled ablation
#: and the privileged ceiling (HERO (rules) with the oracle's action as every error's target); seeds 0-2;
#: 50 held-out goals; two nested budgets. A batch is 8 episodes of at most 8 turns (<= 64 turns), so the top
#: budget of 1024 turns is >= 16 optimizer steps for every method (~17 at the ~7.3 turns per sampled episode
#: the probe measured on this warm start) and 512 about half. Weights are snapshotted only at the budgets;
#: no activation checkpointing (on a CPU it recomputes the forward for memory the machine does not need).
#: Many hours on 2 cores: run it from a frozen commit in its own worktree; a rerun with the same commit and
#: ``--out`` reuses every finished cell and resumes an interrupted training run from its checkpoint.
CPU_LONG = {"envs": ["WebShop"], "methods": [BASE, "grpo", "envfb_sd", "hero_rules", "hero_rules_shuffled",
                                             "hero_rules_oracle"],
            "reference": "hero_rules", "budgets": [512, 1024], "seeds": [0, 1, 2], "eval_tasks": 50,
            "env_kwargs": SMALL_MODEL_WEBSHOP, "warm_start_overrides": CPU_WARM_START, "workers": 2,
            "snapshots": "budgets", "mechanism_episodes": 0, "out": "runs/cpu-long",
            # a 135M model's activations for one episode fit in memory many times over: recomputing the
            # forward pass in the backward (activation checkpointing) would only cost time on a CPU
            "train_overrides": {"gradient_checkpointing": False}}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": PAPER,
    "cpu-long": CPU_LONG,
    "default": {"envs": ["WebShop"], "methods": [BASE, "envfb_sd", "hero_rules", "hero_rules_shuffled"],
                "reference": "hero_rules", "mechanism_episodes": 8,
                "budgets": [32], "seeds": [0], "eval_tasks": 30, "env_kwargs": SMALL_MODEL_WEBSHOP,
                "warm_start_overrides": CPU_WARM_START, "workers": 2, "out": "runs/default"},
    "cpu": {"envs": ["WebShop"], "budgets": [32], "seeds": [0, 1, 2], "eval_tasks": 30,
            "env_kwargs": SMALL_MODEL_WEBSHOP, "warm_start_overrides": CPU_WARM_START, "workers": 2,
            "mechanism_episodes": 20, "out": "runs/cpu"},
    # the smoke test runs every method, the privileged ceiling included
    "quick": {"model": "tiny", "warm_start": False, "envs": ["Lookup", "WebShop"], "methods": list(METHOD_ORDER),
              "budgets": [6, 12],
              "seeds": [0, 1], "eval_tasks": 3, "max_turns": 3, "num_products": 100, "max_new_tokens": 12,
              "group_size": 2, "tasks_per_update": 2, "threads": 1, "bootstrap": 500, "out": "runs/quick",
              "mechanism_episodes": 2,
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
    # the help is plain text, not RST: ``x`` and :mod:`x` read as `x`
    doc = re.sub(r":[a-z]+:`", "`", (sys.modules[__package__].__doc__ or "").replace("``", "`"))
    ap = _Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="default (make bench): SmolLM2 warm-started, WebShop, the base against env-feedback SD, "
                         "HERO (rules) and its shuffled ablation, 1 seed; cpu: WebShop, every method, 3 seeds "
                         "(hours on a CPU); cpu-long: the sized WebShop experiment with a privileged ceiling "
                         "(many hours); quick: tiny random model smoke test; paper: GPUs")
    ap.add_argument("--quick", action="store_true", help="same as --preset quick")
    ap.add_argument("--model", help="'smollm2' (embedded default), 'tiny' (random), or an HF id / local path")
    ap.add_argument("--device", help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--warm-start", dest="warm_start", action="store_true", default=None,
                    help="start every method from the behaviour-cloned model (built once, cached)")
    ap.add_argument("--no-warm-start", dest="warm_start", action="store_false", help="start from the raw model")
    ap.add_argument("--data-dir", help="official Tau-bench data (default $HERO_GYM_TAUBENCH_DIR)")
    ap.add_argument("--envs", nargs="+", help=f"any of {list(ENV_SETUPS)}")
    ap.add_argument("--methods", nargs="+", help=f"any of {METHOD_ORDER}")
    ap.add_argument("--reference", help="the method compared with every other one (default: the preset's; "
                                        "hero_rules in default, hero in cpu and quick)")
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
    ap.add_argument("--mechanism-episodes", type=int,
                    help="episodes of the report's Mechanism section (the probe, docs/probe.md; 0 = none)")
    ap.add_argument("--rollout", choices=["hf", "vllm"],
                    help="who generates rollouts, evaluations and reflections: hf (transformers) or vllm (GPU)")
    ap.add_argument("--eval-slots", type=int, help="evaluation episodes at once (default: all)")
    ap.add_argument("--snapshots", choices=["every", "budgets"],
                    help="weight snapshots after every iteration, or only where the budgets read them")
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
    bad = [m for m in o.methods if m not in METHOD_ORDER]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {METHOD_ORDER}")
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
    if o.workers == 0:   # the paper preset: one worker per visible GPU
        o.workers = gpu_workers()
    if o.workers < 1:
        ap.error(f"--workers must be >= 1, got {o.workers}")
    if o.eval_slots is not None and o.eval_slots < 1:
        ap.error(f"--eval-slots must be >= 1, got {o.eval_slots}")
    o.changed = changed_from_preset(o)
    return o


def changed_from_preset(o: Options) -> list[str]:
    """The settings of ``o`` that differ from its preset's (what a report names next to the preset)."""
    ref = Options(preset=o.preset, **copy.deepcopy(PRESETS[o.preset]))
    # workers and eval slots change speed, not results
    skip = ("preset", "report_only", "out", "changed", "given", "workers", "eval_slots")
    return [f.name for f in dataclasses.fields(Options)
            if f.name not in skip and getattr(o, f.name) != getattr(ref, f.name)]


def preset_label(o: dict[str, Any]) -> str:
    """``"cpu preset"``, or ``"cpu preset, changed: budgets, seeds"`` when flags overrode its settings."""
    changed = o.get("changed") or []
    return f"{o['preset']} preset" + (f", changed: {', '.join(changed)}" if changed else "")


def setups_for(o: Options) -> dict[str, EnvSetup]:
    """Every env's setup under ``o`` (its env kwargs, eval-task count and turn cap applied)."""
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



def gpu_workers() -> int:
    """One worker per visible GPU (at least one)."""
    import torch

    return max(1, torch.cuda.device_count())


def worker_threads(threads: int | None, workers: int, cpu_count: int | None) -> int:
    """Torch threads of each worker process: ``--threads`` when given, else an equal share of the cores."""
    return threads or max(1, (cpu_count or 1) // workers)
