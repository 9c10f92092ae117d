"""The benchmark protocol: training runs, evaluated cells, and their reuse.

One :class:`Run` per (env, method, seed) trains to the largest budget; each budget's cell evaluates the
snapshot :func:`hero_gym.agents.checkpoint.snapshot_for_budget` picks. A run or cell is reused when its
fingerprint (code, starting weights, every setting it depends on) matches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import list_snapshots, load_snapshot, snapshot_for_budget
from .presets import BASE, EnvSetup, Options, setups_for
from .provenance import code_fingerprint, sha
from .source import ModelSource

__all__ = ["Bench", "Run", "TRAINING_COUNTS", "cell_key", "per_task_rows", "steps_at", "summarise_cell",
           "training_at", "wasted_turns"]


def steps_at(metrics: Sequence[dict[str, Any]], turns: int) -> int:
    """Optimizer steps taken when ``turns`` training turns had been spent."""
    rows = [m for m in metrics if (m.get("turns_used") or 0) <= turns]
    if not rows:
        return 0
    last = rows[-1]
    return int(last.get("optimizer_steps", last.get("update", len(rows))))


#: per-iteration training counts summed up to a snapshot into its cell (absent in older runs' metrics)
TRAINING_COUNTS = ("scored_turns", "demo_notes", "demo_from_expert", "future_copy_diagnoses_dropped",
                   "future_copy_targets_dropped")


def training_at(metrics: Sequence[dict[str, Any]], turns: int) -> dict[str, Any]:
    """What a run had trained when ``turns`` training turns had been spent: optimizer steps, action tokens
    trained (entered a loss with a signal) and the sums of :data:`TRAINING_COUNTS` (``None`` when the run's
    metrics do not record one)."""
    rows = [m for m in metrics if (m.get("turns_used") or 0) <= turns]
    out: dict[str, Any] = {"optimizer_steps": steps_at(metrics, turns),
                           "tokens_trained": int(rows[-1].get("tokens_trained_total", 0)) if rows else 0}
    for k in TRAINING_COUNTS:
        out[k] = sum(int(m[k]) for m in rows) if rows and all(k in m for m in rows) else (0 if not rows else None)
    return out



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


def wasted_turns(ep: Any) -> tuple[int, int]:
    """``(redundant, no_effect)`` turns of an episode, from what the agent could see.

    Redundant: the same action (whitespace- and case-normalised text) as an earlier turn in the same
    state, where the state is the last observation a *valid* action produced (an invalid action changes
    nothing, so clicking a missing button twice is one redundant turn). No effect: the rule reflector's
    verdict (a valid action whose observation did not change, or a no-op flag)."""
    from hero_gym.agents.reflector import RuleReflector

    verdicts = RuleReflector().reflect_one(ep)
    redundant = no_effect = 0
    seen: set[tuple[str, str]] = set()
    state = ep.initial_observation
    for t, turn in enumerate(ep.turns):
        key = (" ".join(turn.action_text.split()).lower(), state)
        if key in seen:
            redundant += 1
        elif t in verdicts and "had no effect" in verdicts[t].diagnosis:
            no_effect += 1
        seen.add(key)
        if turn.action_error is None:
            state = turn.observation
    return redundant, no_effect


def per_task_rows(episodes: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per evaluation episode: task, success, score, turns, valid turns, redundant and no-effect
    turns (:func:`wasted_turns`)."""
    rows = []
    for ep in episodes:
        turns = len(ep.turns)
        valid = sum(t.action_error is None for t in ep.turns)
        redundant, no_effect = wasted_turns(ep)
        rows.append({"task": ep.options.get("task_index", ep.task_id), "success": float(bool(ep.success)),
                     "score": float(ep.total_reward), "turns": turns, "valid_turns": valid,
                     "redundant_turns": redundant, "no_effect_turns": no_effect})
    return rows


def summarise_cell(per_task: list[dict[str, Any]]) -> dict[str, Any]:
    """A cell's means over its evaluation episodes."""
    n = max(1, len(per_task))
    turns = sum(r["turns"] for r in per_task)
    wins = [r["turns"] for r in per_task if r["success"]]
    waste = all("redundant_turns" in r for r in per_task)
    return {"success_rate": sum(r["success"] for r in per_task) / n,
            "mean_score": sum(r["score"] for r in per_task) / n,
            "mean_turns": turns / n,
            "mean_turns_successful": sum(wins) / len(wins) if wins else None,
            "redundant_per_episode": sum(r["redundant_turns"] for r in per_task) / n if waste else None,
            "no_effect_per_episode": sum(r["no_effect_turns"] for r in per_task) / n if waste else None,
            "valid_action_rate": (sum(r["valid_turns"] for r in per_task) / turns) if turns else None,
            "n_eval_episodes": len(per_task)}


def iteration_seconds(rows: Sequence[dict[str, Any]]) -> float:
    """The training time the trainer's metrics rows record: the sum of each iteration's ``seconds["iteration"]``."""
    return sum(float(r.get("seconds", {}).get("iteration", 0.0)) for r in rows)


class Bench:
    """Runs the matrix of one :class:`Options` into ``out``."""

    def __init__(self, opts: Options, out: Path, log: Callable[[str], None]):
        self.opts, self.out, self.log = opts, out, log
        self.setups = setups_for(opts)
        self.source = ModelSource(opts)
        self.reused = 0
        self.rerun_stale = 0
        #: runs and cells by other code or settings, moved under ``out/stale/`` (never deleted)
        self.kept_aside: list[str] = []
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
                "trainer": {"method": run.method}, "group_size": o.group_size,
                "tasks_per_update": o.tasks_per_update, "lr": o.lr, "max_new_tokens": o.max_new_tokens,
                "tool_prompt": o.tool_prompt, "overrides": self.train_overrides(),
                "demo_max_chars": setup.demo_max_chars}

    def gpu_settings(self) -> dict[str, Any]:
        """What ``--rollout`` and ``--snapshots`` add to a run's settings (only when not the defaults, so runs from
        before these options keep their fingerprints)."""
        o = self.opts
        return {**({"rollout": o.rollout} if o.rollout != "hf" else {}),
                **({"snapshots": o.snapshots, "budgets": sorted(o.budgets)} if o.snapshots != "every" else {})}

    def snapshot_settings(self) -> dict[str, Any]:
        """``TrainConfig`` fields of ``--snapshots budgets``: snapshots only where the budgets read them,
        in bf16 on CUDA."""
        if self.opts.snapshots == "every":
            return {}
        cuda = str(self.opts.device or "").startswith("cuda")
        return {"snapshot_budgets": list(self.opts.budgets), "snapshot_dtype": "bfloat16" if cuda else "keep"}

    def train_overrides(self) -> dict[str, Any]:
        from hero_gym.agents.trainer import TrainConfig

        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return {k: v for k, v in self.opts.train_overrides.items() if k in names}

    def run_fingerprint(self, setup: EnvSetup, run: Run) -> str:
        return sha({"code": code_fingerprint(), "weights": self.source.identity(setup),
                     "device": self.opts.device,
                    "train": {**self.train_settings(setup, run), **self.gpu_settings()}})

    def eval_fingerprint(self, setup: EnvSetup, origin: str, snapshot_turns: int) -> str:
        return sha({"code": code_fingerprint(), "weights": self.source.identity(setup), "origin": origin,
                     "snapshot_turns": snapshot_turns, "eval": {**self.eval_settings(setup), **({"rollout": self.opts.rollout} if self.opts.rollout != "hf" else {})},
                    "device": self.opts.device})

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, policy: Any, setup: EnvSetup) -> tuple[list[Any], float]:
        from hero_gym.agents.trainer import evaluate

        n = self._n_eval(setup)
        t0 = time.perf_counter()
        engine = self.source.rollout(setup)
        with contextlib.ExitStack() as stack:
            if engine is not None:   # vLLM evaluates: the policy's adapter (a fresh one = the base) handed over
                import tempfile

                adapter = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hero_gym_eval_adapter_")))
                policy.save(adapter)
                engine.set_lora(adapter)
                policy = engine
            # Reset seeds depend on the goal only: every method and seed plays the same episodes.
            ev = evaluate(policy, setup.env_id, setup.eval_kwargs, task_indices=list(range(n)),
                          seeds=[100_000 + i for i in range(n)], temperature=0.0, max_turns=setup.max_turns,
                          max_new_tokens=self.opts.max_new_tokens, num_envs=min(n, self.opts.eval_slots or n),
                          tool_prompt=self.opts.tool_prompt)
        return ev.episodes, time.perf_counter() - t0

    def set_aside(self, path: Path, fingerprint: str | None) -> Path:
        """Move a run or cell folder computed by other code or settings to ``out/stale/<kind>/<name>__<its
        fingerprint>`` (a finished run is never deleted) and record it."""
        kind = path.parent.name
        target = self.out / "stale" / kind / f"{path.name}__{fingerprint or 'unknown'}"
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{path.name}__{fingerprint or 'unknown'}__{n}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        self.kept_aside.append(str(target.relative_to(self.out)))
        return target

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
        self.set_aside(cdir, res.get("fingerprint"))
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
        per_task = per_task_rows(episodes)
        result = {"env": env, "method": BASE, "budget": 0, "seed": None, "snapshot_turns": 0, "optimizer_steps": 0,
                  **summarise_cell(per_task), "per_task": per_task, "eval_seconds": secs, "wall_seconds": secs,
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
        """The run record if ``rdir`` holds this fingerprint's run. A run by other code or settings is kept
        aside (:meth:`set_aside`) and this one starts over."""
        meta_f, fp_f = rdir / "run.json", rdir / "fingerprint"
        meta = json.loads(meta_f.read_text()) if meta_f.exists() else None
        ours = (fp_f.exists() and fp_f.read_text() == rfp) or (meta is not None and meta.get("fingerprint") == rfp)
        if rdir.exists() and not ours:
            old = fp_f.read_text() if fp_f.exists() else (meta or {}).get("fingerprint")
            self.set_aside(rdir, old)
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
        for b in self.opts.budgets:
            if b not in done and (cdirs[b] / "result.json").exists():
                self.rerun_stale += 1
                self.set_aside(cdirs[b], json.loads((cdirs[b] / "result.json").read_text()).get("fingerprint"))
        meta = self._run_meta(rdir, rfp)
        policy = None
        if len(done) < len(self.opts.budgets) and (meta is None or meta["turn_budget"] < top):
            from hero_gym.agents.trainer import TrainConfig, train

            t0 = time.perf_counter()
            rdir.mkdir(parents=True, exist_ok=True)
            (rdir / "fingerprint").write_text(rfp)   # an interrupted run resumes only under the same fingerprint
            policy = self.source.policy(setup, run.seed)
            cfg = TrainConfig(
                env_id=setup.env_id, env_kwargs=setup.train_kwargs, turn_budget=top, max_turns=setup.max_turns,
                task_indices=list(range(setup.train_tasks)), tasks_per_update=self.opts.tasks_per_update,
                group_size=self.opts.group_size, max_new_tokens=self.opts.max_new_tokens, lr=self.opts.lr,
                checkpoint_dir=str(rdir / "train"), tool_prompt=self.opts.tool_prompt, seed=run.seed,
                progress=False, **{"demo_max_chars": setup.demo_max_chars, **self.snapshot_settings(), **self.train_overrides(),
                                   "method": run.method})
            result = train(policy, cfg, rollout_policy=self.source.rollout(setup))
            metrics = list(result.metrics)
            snaps = list_snapshots(cfg.checkpoint_dir)
            # an interrupted run resumed from its checkpoint has no run.json yet: the iterations it restored
            # count with the time they took (their metrics rows), else the run's compute is undercounted
            restored = iteration_seconds(metrics[:result.resumed_from_iteration])
            meta = {**asdict(run), "fingerprint": rfp, "turn_budget": top,
                    "train_seconds": (meta["train_seconds"] if meta else restored) + time.perf_counter() - t0,
                    "snapshots": {str(t): str(p.relative_to(rdir)) for t, p in sorted(snaps.items())},
                    "metrics": [{k: m[k] for k in ("update", "iteration", "optimizer_steps", "turns_used",
                                                   "success_rate", "mean_reward", "tokens_trained",
                                                   "tokens_trained_total", "action_tokens", *TRAINING_COUNTS)
                                 if k in m} for m in metrics]}
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
        evaluated: dict[int, list[Any]] = {}   # optimizer steps -> the episodes of those weights
        trained_turns = meta["metrics"][-1]["turns_used"] if meta["metrics"] else top
        for budget in self.opts.budgets:
            if budget in done:
                res = {**done[budget], "reused": True}
                self.reused += 1
            else:
                # the model at budget B: the first snapshot at or past B (the batch that crossed B is in)
                path = snapshot_for_budget(rdir / "train", budget)
                turns = int(json.loads((path / "snapshot.json").read_text())["turns"])
                trained = training_at(meta["metrics"], turns)
                steps = trained["optimizer_steps"]
                if steps in evaluated:
                    # a smaller budget read weights of the same step (no step in between): same answer
                    episodes, secs = evaluated[steps], 0.0
                elif steps == 0:
                    # no optimizer step yet: the weights are the base's (a fresh LoRA adds exactly 0), so
                    # its greedy evaluation is the base cell's; reuse it instead of replaying it
                    episodes, secs = self._base_episodes(run.env), 0.0
                else:
                    if policy is None:
                        policy = self.source.policy(setup, run.seed)
                    load_snapshot(policy, path)
                    episodes, secs = self.evaluate(policy, setup)
                evaluated[steps] = episodes
                per_task = per_task_rows(episodes)
                res = self._write_cell(cdirs[budget], {
                    "env": run.env, "method": run.method, "budget": budget, "seed": run.seed,
                    "snapshot_turns": turns, **trained,
                    **summarise_cell(per_task), "per_task": per_task, "eval_seconds": secs,
                    "run_train_seconds": meta["train_seconds"],
                    # a cell's share of its run's training time: its snapshot's fraction of the turns trained
                    "wall_seconds": secs + meta["train_seconds"] * min(1.0, turns / max(1, trained_turns)),
                    "fingerprint": self.eval_fingerprint(setup, rfp, turns)}, episodes)
            on_cell(res)
        del policy
        return meta

