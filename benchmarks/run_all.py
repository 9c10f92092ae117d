"""The HERO comparison: methods x environments x training-turn budgets x seeds.

    python benchmarks/run_all.py                 # the embedded default: SmolLM2-135M on CPU, WebShop (~20 min)
    python benchmarks/run_all.py --envs TauRetail TauAirline WebShop   # all three (hours on a CPU)
    python benchmarks/run_all.py --quick         # tiny random model, a handful of turns (<= 3 min)
    python benchmarks/run_all.py --speed         # also run env_speed.py and trainer_speed.py

Every cell (env, method, budget, seed) starts from the same base weights with a fresh LoRA
adapter, trains on the env's training tasks until the turn budget is spent (the untrained base
is evaluated once per env and seed), then is evaluated on held-out tasks. A finished cell writes
``cells/<cell>/result.json``; a rerun skips finished cells and resumes a half-trained one from its
last checkpoint.

Outputs in ``--out``: ``cells/*/{train,eval}_episodes.jsonl``, ``results.json``, ``results.csv``,
``results.md`` (mean +- standard error over seeds), ``success_vs_budget.png``,
``turns_vs_budget.png``, ``training_curves.png``.

A paper-scale GPU run (see README): ``--model <hf id or path> --device cuda --backend vllm
--budgets 2000 5000 10000 --seeds 0 1 2 --eval-tasks 0`` (0 = every held-out task).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ["base", "grpo", "envfb_sd", "full_demo", "hero"]
METHOD_LABELS = {"base": "untrained base", "grpo": "GRPO", "envfb_sd": "env-feedback SD",
                 "full_demo": "full-demo teacher", "hero": "HERO"}


@dataclass(frozen=True)
class EnvSetup:
    """How one environment is trained and evaluated in the benchmark."""

    name: str
    env_id: str
    train_kwargs: dict[str, Any]
    eval_kwargs: dict[str, Any]
    eval_tasks: int            # held-out tasks evaluated (the first N of the eval split)
    train_tasks: int           # training tasks cycled through
    trials: int = 1            # evaluation trials per task (pass^k needs k <= trials)
    max_turns: int = 10


def env_setups(quick: bool, data_dir: str | None) -> dict[str, EnvSetup]:
    """Train/eval splits: Tau retail trains on the official train split and is evaluated on test;
    Tau airline (whose official data has only a test split) trains on generated airline tasks;
    WebShop trains on the generated train goals and is evaluated on the test goals."""
    tau = {"data_dir": data_dir} if data_dir else {}
    n_eval, n_train, trials, turns = (2, 4, 1, 4) if quick else (4, 40, 1, 5)
    ws = {"num_products": 200 if quick else 1000}
    return {
        "TauRetail": EnvSetup("TauRetail", "hero_gym/TauRetail-v0", {**tau, "split": "train"},
                              {**tau, "split": "test"}, n_eval, n_train, trials, turns),
        "TauAirline": EnvSetup("TauAirline", "hero_gym/TauAirline-v0", {"data": "generated", "split": "train"},
                               {**tau, "split": "test"}, n_eval, n_train, trials, turns),
        "WebShop": EnvSetup("WebShop", "hero_gym/WebShop-v0", {**ws, "split": "train"}, {**ws, "split": "test"},
                            n_eval, n_train, trials, turns),
        "Lookup": EnvSetup("Lookup", "hero_gym/Lookup-v0", {}, {}, n_eval, n_train, trials, 4),
    }


@dataclass
class Cell:
    env: str
    method: str
    budget: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.env}__{self.method}__b{self.budget}__s{self.seed}"


@dataclass
class Options:
    model: str = "smollm2"
    device: str | None = None
    backend: str = "hf"
    data_dir: str | None = None
    # The CPU default runs WebShop only: a Tau-bench cell re-encodes a 1.2-2k-token context every turn and
    # takes over 10 minutes on 2 cores, so the Tau half alone would exceed the 30-minute default budget.
    envs: list[str] = field(default_factory=lambda: ["WebShop"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    budgets: list[int] = field(default_factory=lambda: [8, 16])
    seeds: list[int] = field(default_factory=lambda: [0])
    out: str = "runs/default"
    quick: bool = False
    speed: bool = False
    report_only: bool = False
    eval_tasks: int | None = None
    max_new_tokens: int = 40
    group_size: int = 2
    tasks_per_update: int = 1
    trials: int | None = None
    threads: int | None = None
    lr: float = 1e-4
    reflector: str = "rules"
    tool_prompt: str = "compact"
    eval_temperature: float = 0.7


def parse_args(argv: list[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="'smollm2' (embedded default), 'tiny' (random, for smoke runs), "
                                                  "or any HF id / local path")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf", help="rollout backend")
    ap.add_argument("--data-dir", default=None, help="official Tau-bench data (default $HERO_GYM_TAUBENCH_DIR)")
    ap.add_argument("--envs", nargs="+", default=None, help="TauRetail TauAirline WebShop Lookup")
    ap.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    ap.add_argument("--budgets", nargs="+", type=int, default=None, help="training-turn budgets")
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="tiny model, a handful of turns (a smoke test)")
    ap.add_argument("--speed", action="store_true", help="also run env_speed.py and trainer_speed.py")
    ap.add_argument("--report-only", action="store_true", help="run nothing: rebuild the tables and plots "
                    "from the cells already finished in --out")
    ap.add_argument("--eval-tasks", type=int, default=None, help="held-out tasks per env (0 = all)")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--trials", type=int, default=None, help="evaluation trials per held-out task "
                    "(pass^k needs k <= trials; with more than one, trials sample at --eval-temperature)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own; "
                    "use 1 when other processes share the CPU, oversubscription is very slow)")
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--reflector", choices=["rules", "llm"], default=None,
                    help="HERO's hindsight reflector: 'llm' (the policy reflects on its own episodes) or "
                         "'rules' (from the env's structured signals; the CPU default, as a 135M model "
                         "rarely writes usable reflection JSON)")
    ap.add_argument("--tool-prompt", choices=["full", "compact"], default=None,
                    help="tool descriptions in the system prompt: 'compact' (one line per tool; the CPU "
                         "default, a quarter of the tokens on Tau-bench) or 'full' JSON schemas")
    ap.add_argument("--eval-temperature", type=float, default=None, help="sampling temperature of "
                    "evaluation trials when there are several per task (pass^k)")
    a = ap.parse_args(argv)
    o = Options()
    if a.quick:
        o = Options(model="tiny", envs=["TauRetail", "TauAirline", "WebShop"], budgets=[4, 8], out="runs/quick",
                    quick=True, max_new_tokens=24, tasks_per_update=1, group_size=2)
    for name in ("model", "device", "backend", "data_dir", "envs", "methods", "budgets", "seeds", "out",
                 "eval_tasks", "max_new_tokens", "group_size", "lr", "reflector", "eval_temperature", "tool_prompt", "trials", "threads"):
        v = getattr(a, name)
        if v is not None:
            setattr(o, name, v)
    o.speed = a.speed
    o.report_only = a.report_only
    unknown = [e for e in o.envs if e not in env_setups(o.quick, o.data_dir)]
    if unknown:
        ap.error(f"unknown env(s) {unknown}")
    return o


# ------------------------------------------------------------------------------------------ model
class ModelSource:
    """Loads the base weights once and hands out fresh copies (each cell gets its own LoRA)."""

    def __init__(self, opts: Options):
        self.opts = opts
        self._base = None
        self.tokenizer = None

    def _load(self) -> None:
        from hero_gym.agents import load_named_model

        self._base, self.tokenizer = load_named_model(self.opts.model, device=self.opts.device)

    def policy(self) -> Any:
        """A fresh trainable HFPolicy (a copy of the base weights with a new LoRA adapter)."""
        import copy

        from hero_gym.agents import HFPolicy

        if self._base is None:
            self._load()
        return HFPolicy(copy.deepcopy(self._base), self.tokenizer, device=self.opts.device)

    def rollout_policy(self) -> Any | None:
        """With ``--backend vllm``: a vLLM engine over the same base weights (GPU only; rollouts and
        evaluation run there, training in the HF model, adapters handed over after every update)."""
        if self.opts.backend != "vllm":
            return None
        from hero_gym.agents import VLLMPolicy, default_model_dir

        path = default_model_dir() if self.opts.model in ("smollm2", "default") else self.opts.model
        return VLLMPolicy(path, self.tokenizer)


# ------------------------------------------------------------------------------------------ cells
def pass_hat_k_from(episodes: list[Any], k: int) -> float | None:
    from hero_gym.metrics import pass_hat_k

    by_task: dict[str, list[bool]] = {}
    for ep in episodes:
        by_task.setdefault(ep.task_id or ep.episode_id, []).append(bool(ep.success))
    if not by_task or min(len(v) for v in by_task.values()) < k:
        return None
    return pass_hat_k({t: v for t, v in by_task.items()}, k)


def valid_action_rate(episodes: list[Any]) -> float | None:
    """Share of evaluation turns whose action parsed and validated (no ``action_error``): the first
    thing a small model has to learn, and visible long before task success is."""
    turns = [t for ep in episodes for t in ep.turns]
    return sum(t.action_error is None for t in turns) / len(turns) if turns else None


def _backfill(result: dict[str, Any], cdir: Path) -> dict[str, Any]:
    """Add metrics introduced after a cell was written (computed from its saved episodes)."""
    if "valid_action_rate" not in result and (cdir / "eval_episodes.jsonl").exists():
        from hero_gym.records import load_jsonl

        result["valid_action_rate"] = valid_action_rate(load_jsonl(cdir / "eval_episodes.jsonl"))
    return result


def run_cell(cell: Cell, setup: EnvSetup, source: ModelSource, opts: Options, out: Path) -> dict[str, Any]:
    from hero_gym.agents.trainer import TrainConfig, evaluate, train
    from hero_gym.records import save_jsonl

    cdir = out / "cells" / cell.key
    cdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    policy = source.policy()
    rollout = source.rollout_policy()
    train_info: dict[str, Any] = {"updates": 0, "turns_used": 0, "train_success_rate": None, "curve": []}
    if cell.method != "base":
        cfg = TrainConfig(
            method=cell.method, env_id=setup.env_id, env_kwargs=setup.train_kwargs, turn_budget=cell.budget,
            max_turns=setup.max_turns, task_indices=list(range(setup.train_tasks)),
            tasks_per_update=opts.tasks_per_update, group_size=opts.group_size,
            max_new_tokens=opts.max_new_tokens, lr=opts.lr, checkpoint_dir=str(cdir / "train"),
            reflector=opts.reflector, tool_prompt=opts.tool_prompt,
            seed=cell.seed, progress=False,
        )
        res = train(policy, cfg, rollout_policy=rollout)
        train_info = {"updates": res.updates, "turns_used": res.turns_used,
                      "train_success_rate": res.train_success_rate,
                      "curve": [{"turns": m.get("turns_used"), "train_reward": m.get("mean_reward"),
                                 "train_success": m.get("success_rate")} for m in res.metrics]}
    t_train = time.perf_counter() - t0
    n_eval = setup.eval_tasks if opts.eval_tasks is None else opts.eval_tasks
    if n_eval == 0:  # every held-out task
        import hero_gym

        probe = hero_gym.make(setup.env_id, **setup.eval_kwargs)
        n_eval = probe.unwrapped.num_tasks() or setup.eval_tasks
        probe.close()
    trials = opts.trials or setup.trials
    # Each held-out task is played `trials` times (different reset seeds); pass^k needs k <= trials.
    # One trial is greedy; with more, every trial samples at --eval-temperature.
    tasks = [i for i in range(n_eval) for _ in range(trials)]
    seeds = [10_000 * (cell.seed + 1) + j for j in range(len(tasks))]
    if rollout is not None and cell.method != "base":
        rollout.set_lora(cdir / "train" / "rollout_adapter")
    ev = evaluate(rollout or policy, setup.env_id, setup.eval_kwargs, task_indices=tasks, seeds=seeds,
                  temperature=0.0 if trials == 1 else opts.eval_temperature,
                  max_turns=setup.max_turns, max_new_tokens=opts.max_new_tokens, num_envs=len(tasks),
                  tool_prompt=opts.tool_prompt)
    save_jsonl(ev.episodes, cdir / "eval_episodes.jsonl")
    result = {
        **asdict(cell), "env_id": setup.env_id,
        "success_rate": ev.success_rate, "mean_reward": ev.mean_reward, "mean_turns": ev.mean_turns,
        "n_eval_episodes": len(ev.episodes), "valid_action_rate": valid_action_rate(ev.episodes),
        "pass^1": pass_hat_k_from(ev.episodes, 1) if setup.env_id.startswith("hero_gym/Tau") else None,
        "pass^2": pass_hat_k_from(ev.episodes, 2) if setup.env_id.startswith("hero_gym/Tau") else None,
        "train_seconds": t_train, "wall_seconds": time.perf_counter() - t0, **train_info,
    }
    (cdir / "result.json").write_text(json.dumps(result, indent=2))
    del policy
    return result


def plan(opts: Options) -> list[Cell]:
    cells = []
    for env in opts.envs:
        for seed in opts.seeds:
            for method in opts.methods:
                budgets = [0] if method == "base" else opts.budgets
                cells += [Cell(env, method, b, seed) for b in budgets]
    return cells


# ------------------------------------------------------------------------------------------ reports
def _mean_se(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def _fmt(m: float, se: float, pct: bool = False) -> str:
    if math.isnan(m):
        return "–"
    scale = 100.0 if pct else 1.0
    return f"{m * scale:.1f}" + ("" if math.isnan(se) else f" ± {se * scale:.1f}")


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["env"], r["method"], r["budget"]), []).append(r)
    rows = []
    for (env, method, budget), rs in sorted(groups.items()):
        row: dict[str, Any] = {"env": env, "method": method, "budget": budget, "seeds": len(rs)}
        for metric in ("success_rate", "mean_reward", "mean_turns", "valid_action_rate", "pass^1", "pass^2",
                       "wall_seconds", "turns_used"):
            row[metric], row[metric + "_se"] = _mean_se([r.get(metric) for r in rs])
        rows.append(row)
    return rows


def write_markdown(rows: list[dict], opts: Options, wall: float, path: Path) -> str:
    lines = [f"Model: `{opts.model}`, device: {opts.device or 'auto'}, budgets (training env turns): "
             f"{opts.budgets}, seeds: {opts.seeds}, wall time: {wall / 60:.1f} min.", "",
             "| env | method | budget | success % | mean reward | mean turns | valid action % | pass^1 % | pass^2 % "
             "| turns spent | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(rows, key=lambda r: (r["env"], r["budget"], order.get(r["method"], 9))):
        lines.append(
            f"| {r['env']} | {METHOD_LABELS.get(r['method'], r['method'])} | {r['budget']} | "
            f"{_fmt(r['success_rate'], r['success_rate_se'], True)} | {_fmt(r['mean_reward'], r['mean_reward_se'])} | "
            f"{_fmt(r['mean_turns'], r['mean_turns_se'])} | "
            f"{_fmt(r['valid_action_rate'], r['valid_action_rate_se'], True)} | {_fmt(r['pass^1'], r['pass^1_se'], True)} | "
            f"{_fmt(r['pass^2'], r['pass^2_se'], True)} | {_fmt(r['turns_used'], float('nan'))} | "
            f"{_fmt(r['wall_seconds'], float('nan'))} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_csv(results: list[dict], path: Path) -> None:
    keys = [k for k in results[0] if k != "curve"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(results)


def plot(rows: list[dict], results: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({r["env"] for r in rows})
    colors = {"base": "#7f7f7f", "grpo": "#1f77b4", "envfb_sd": "#ff7f0e", "full_demo": "#2ca02c", "hero": "#d62728"}
    written = []
    for metric, ylabel, fname, scale in (("success_rate", "held-out success rate (%)", "success_vs_budget.png", 100),
                                         ("mean_turns", "mean turns per held-out episode", "turns_vs_budget.png", 1)):
        fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs), 3.8), squeeze=False)
        for ax, env in zip(axes[0], envs):
            budgets = sorted({r["budget"] for r in rows if r["env"] == env and r["method"] != "base"})
            for method in METHODS:
                rs = sorted((r for r in rows if r["env"] == env and r["method"] == method), key=lambda r: r["budget"])
                if not rs:
                    continue
                label = METHOD_LABELS[method]
                if method == "base":
                    ax.axhline(rs[0][metric] * scale, color=colors[method], ls="--", label=label)
                    continue
                xs = [r["budget"] for r in rs]
                ys = [r[metric] * scale for r in rs]
                es = [0 if math.isnan(r[metric + "_se"]) else r[metric + "_se"] * scale for r in rs]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=colors[method], label=label)
            ax.set_title(env)
            ax.set_xlabel("training budget (environment turns)")
            ax.set_ylabel(ylabel)
            if budgets:
                ax.set_xticks(budgets)
            if metric == "success_rate":
                ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8, loc="best")
        fig.text(0.01, 0.005, "Methods with equal values draw on top of each other (HERO is drawn last).",
                 fontsize=7, color="#555555")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)
        written.append(out / fname)

    fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs), 3.8), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for r in results:
            if r["env"] != env or r["method"] == "base" or not r.get("curve"):
                continue
            if r["budget"] != max(x["budget"] for x in results if x["env"] == env and x["method"] == r["method"]):
                continue
            pts = [(c["turns"], c["train_reward"]) for c in r["curve"] if c.get("turns") is not None
                   and c.get("train_reward") is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", color=colors[r["method"]],
                        label=f"{METHOD_LABELS[r['method']]} (seed {r['seed']})")
        ax.set_title(f"{env}: training curves (largest budget)")
        ax.set_xlabel("environment turns spent")
        ax.set_ylabel("mean training-episode reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)
    written.append(out / "training_curves.png")
    return written


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    out = Path(opts.out)
    if not out.is_absolute():
        out = REPO / out
    out.mkdir(parents=True, exist_ok=True)
    (out / "options.json").write_text(json.dumps(asdict(opts), indent=2))
    setups = env_setups(opts.quick, opts.data_dir)
    cells = plan(opts)
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    source = ModelSource(opts)
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()) as progress:
        bar = progress.add_task("cells", total=len(cells))
        for cell in cells:
            done = out / "cells" / cell.key / "result.json"
            if done.exists():
                results.append(_backfill(json.loads(done.read_text()), done.parent))
            elif opts.report_only:
                pass
            else:
                progress.update(bar, description=f"{cell.key}")
                results.append(run_cell(cell, setups[cell.env], source, opts, out))
            progress.advance(bar)
    wall = time.perf_counter() - t0
    if opts.report_only:
        wall = sum(r["wall_seconds"] for r in results)
        missing = len(cells) - len(results)
        print(f"report only: {len(results)} finished cells, {missing} not run")
        if not results:
            raise SystemExit("no finished cells in " + str(out))
    rows = aggregate(results)
    (out / "results.json").write_text(json.dumps({"options": asdict(opts), "cells": results, "summary": rows,
                                                   "wall_seconds": wall}, indent=2))
    write_csv(results, out / "results.csv")
    table = write_markdown(rows, opts, wall, out / "results.md")
    plot(rows, results, out)
    print(table)
    if opts.speed:
        import env_speed
        import trainer_speed

        env_speed.main([])
        trainer_speed.main([])
    print(f"wrote {out}")
    return {"out": str(out), "results": results, "wall_seconds": wall}


if __name__ == "__main__":
    main()
