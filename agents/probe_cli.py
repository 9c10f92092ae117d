"""``hero-gym probe`` / ``python -m hero_gym.agents.probe_cli``: the mechanism probe's command line.

Loads the model (raw, or the env's warm start built once and cached), probes tasks of the training split the
warm start never saw, prints the report and writes the files (:mod:`hero_gym.agents.probe`,
:mod:`hero_gym.agents.probe_report`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from .probe import ProbeConfig, config_dict, run_probe

__all__ = ["build_parser", "main", "warm_start_seen_tasks"]


def warm_start_seen_tasks(env_id: str, wcfg: Any) -> list[int]:
    """Training-task indices a warm start saw (its demonstrations and recovery rollouts), to probe others."""
    import hero_gym

    from .warmstart import _tasks as ws_tasks

    env = hero_gym.make(env_id, **wcfg.env_kwargs)
    try:
        tasks = ws_tasks(env, "train", wcfg.episodes, wcfg.seed, shuffle=True)
        for r in range(wcfg.recovery_rounds):
            tasks += ws_tasks(env, "train", wcfg.recovery_episodes, wcfg.seed + 1 + r, shuffle=True)
    finally:
        env.close()
    return sorted({int(t.options["task_index"]) for t in tasks})


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are :class:`hero_gym.cli.CLIError` (one line, exit status 2 under ``hero-gym``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from hero_gym.cli import CLIError

        raise CLIError(f"{message} (see {self.prog} --help)")


def build_parser(prog: str = "hero-gym probe") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="The mechanism probe: how each method's note moves the "
                                "self-teacher on the student's own rollouts (forward passes only).")
    p.add_argument("env_id")
    p.add_argument("--methods", nargs="+", default=None, help="methods whose notes are probed (default: every "
                   "distilling method); the controls are always added")
    p.add_argument("--model", default="smollm2", help="smollm2 | tiny | HF id or local path")
    p.add_argument("--warm-start", action="store_true", help="probe the env's warm start of --model (built once, "
                   "cached): the benchmark's settings unless -c overrides them")
    p.add_argument("--warm-start-config", "-c", action="append", default=[], metavar="KEY=VALUE",
                   help="WarmStartConfig field (repeatable)")
    p.add_argument("--kwarg", "-k", action="append", default=[], metavar="KEY=VALUE", help="env constructor argument")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="task split the student is rolled out on ('none': no split)")
    p.add_argument("--max-turns", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--tool-prompt", choices=["compact", "full"], default="compact")
    p.add_argument("--model-reflector-episodes", type=int, default=4,
                   help="episodes the model reflector diagnoses (slow on a CPU; 0 = skip HERO's model rows)")
    p.add_argument("--note-styles", nargs="*", default=[], help="extra HERO (rules) rows in these note styles "
                   "(hero_gym.agents.teachers.NOTE_STYLES, e.g. legacy no_echo target_only)")
    p.add_argument("--rollout-slots", type=int, default=16, help="episodes sampled together (one batched step)")
    p.add_argument("--reference-scoring", action="store_true", help="score one note row per pass (the slower "
                   "reference path; default: all rows of a turn in one token trie, same numbers)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--scoring-workers", type=int, default=0, help="episodes scored at once, one torch thread each "
                   "(default: the torch thread count on a CPU, 1 on an accelerator; same numbers either way)")
    p.add_argument("--out", default=None, help="write probe.md, probe.json, turns.csv, delta.png, examples.md here")
    return p


def main(argv: Sequence[str] | None = None, parser: Any = None) -> int:
    """``hero-gym probe`` (also ``python -m hero_gym.agents.probe``): print the report, write the files."""
    import dataclasses

    import hero_gym
    from hero_gym.cli import json_or_str

    from .methods import METHODS
    from .models import load_named_model
    from .probe_report import markdown, summarise, write_outputs

    parser = parser or build_parser()
    a = parser.parse_args(argv)

    def kv(items: list[str], what: str) -> dict[str, Any]:
        out = {}
        for item in items:
            if "=" not in item:
                parser.error(f"{what} must be KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            out[k.strip()] = json_or_str(v)
        return out

    if a.env_id not in hero_gym.list_envs():
        parser.error(f"unknown env {a.env_id!r}; registered: {', '.join(hero_gym.list_envs())}")
    methods = a.methods or [m for m, s in METHODS.items() if s.distills and not s.oracle]
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    if a.scoring_workers < 0:
        parser.error(f"--scoring-workers must be >= 0 (0 = automatic), got {a.scoring_workers}")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    env_kwargs = kv(a.kwarg, "--kwarg")
    split = None if a.split == "none" else a.split
    skip: list[int] = []
    t0 = time.perf_counter()
    if a.warm_start:
        from .warmstart import WarmStartConfig, load_warm_started

        names = {f.name for f in dataclasses.fields(WarmStartConfig)}
        over = kv(a.warm_start_config, "--warm-start-config")
        bad = sorted(set(over) - names)
        if bad:
            parser.error(f"unknown WarmStartConfig field(s) {bad}; valid: {sorted(names)}")
        wcfg = WarmStartConfig(**{"env_id": a.env_id, "env_kwargs": {k: v for k, v in env_kwargs.items() if k != "split"},
                                  "max_new_tokens": a.max_new_tokens, "max_turns": a.max_turns,
                                  "eval_max_turns": a.max_turns, "tool_prompt": a.tool_prompt, "progress": True,
                                  **over})
        model, tok = load_warm_started(wcfg, base="default" if a.model == "smollm2" else a.model, device=a.device)
        skip = warm_start_seen_tasks(a.env_id, wcfg) if split == "train" else []
        model_desc = f"{a.model}, warm-started ({wcfg.episodes} demonstrations, {wcfg.recovery_rounds} recovery rounds)"
        ws_meta = {k: v for k, v in dataclasses.asdict(wcfg).items() if k != "progress"}
    else:
        model, tok = load_named_model(a.model, device=a.device)
        model_desc, ws_meta = f"{a.model} (raw)", None
    cfg = ProbeConfig(env_id=a.env_id, env_kwargs=env_kwargs, methods=methods, episodes=a.episodes, seed=a.seed,
                      split=split, skip_tasks=skip, temperature=a.temperature, max_new_tokens=a.max_new_tokens,
                      max_turns=a.max_turns, tool_prompt=a.tool_prompt,
                      model_reflector_episodes=a.model_reflector_episodes, n_boot=a.bootstrap,
                      note_styles=list(a.note_styles), rollout_slots=a.rollout_slots,
                      tree_scoring=not a.reference_scoring, scoring_workers=a.scoring_workers)
    import os

    load0 = os.getloadavg()[0]
    res = run_probe(model, tok, cfg, progress=True)
    if a.out:   # the rollouts, for audit and reuse
        from pathlib import Path

        from hero_gym.records import save_jsonl

        save_jsonl(res.episodes, Path(a.out) / "episodes.jsonl")
    t_stats = time.perf_counter()
    summary = summarise(res.turns, res.rows, n_boot=cfg.n_boot, seed=cfg.seed)
    res.seconds["statistics"] = time.perf_counter() - t_stats
    import platform

    import torch

    meta = {"env_id": a.env_id, "model": model_desc, "warm_start": ws_meta, "temperature": cfg.temperature,
            "split": split, "seconds": time.perf_counter() - t0, "timings": res.seconds, "oracle": res.oracle,
            "config": config_dict(cfg), "hardware": f"{platform.machine()} CPU, {torch.get_num_threads()} torch "
            "thread(s)" if a.device in (None, "cpu") else str(a.device),
            "command": "hero-gym probe " + " ".join(argv if argv is not None else sys.argv[1:]),
            "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    meta["config"]["env_kwargs"] = {k: ("<HERO_GYM_TAUBENCH_DIR>" if k == "data_dir" else v)
                                    for k, v in cfg.env_kwargs.items()}
    print(markdown(summary, meta))
    if a.out:
        print(f"probe: files in {write_outputs(res, summary, meta, None, a.out)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from hero_gym.cli import main as cli_main

    sys.exit(cli_main(["probe", *sys.argv[1:]]))
