"""Where the time of one training batch and one evaluation goes, with the real model (SmolLM2-135M,
warm-started as the benchmark does) on WebShop at a benchmark preset's settings.

    HERO_GYM_CACHE=... python benchmarks/train_profile.py [--preset cpu-long] [--method hero_rules]
        [--eval-goals 10] [--threads 1] [--sampler both|multinomial|inverse-cdf]

For each sampler (``multinomial`` = ``torch.multinomial``, the way tokens were drawn before;
``inverse-cdf`` = :func:`hero_gym.agents.policy.sample_tokens`, the way they are drawn now) it runs one
training iteration of ``--method`` (rollouts of one batch, reflection, notes, the update) and one greedy
evaluation of ``--eval-goals`` held-out goals, under cProfile, and prints seconds per phase and per turn:
model forward passes, token sampling, the env's steps, tokenisation, and the rest. Both samplers run
in the same process on the same machine one after the other; quote ratios from one run only, on a
quiet machine (two torch processes that each use every core slow each other down by an order of
magnitude).
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import json
import os
import pstats
import tempfile
import time
from typing import Any

import torch

#: cProfile functions whose cumulative time makes up each phase (file fragment, function name)
PHASES = {
    "model forward": [("policy.py", "_forward"), ("scoring.py", "student_hidden"), ("update.py", "teacher_scores")],
    "sampling": [("policy.py", "sample_tokens"), ("~", "<built-in method torch.multinomial>")],
    "env step": [("core.py", "step")],
    "rule reflector": [("rule_reflector.py", "reflect")],
    "tokeniser": [("chat.py", "render"), ("tokenization_utils_base.py", "decode"),
                  ("tokenization_utils_base.py", "encode")],
    "backward": [("~", "<method 'run_backward' of 'torch._C._EngineBase' objects>")],
}


def _phase_seconds(prof: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(prof).stats   # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    out = {}
    for phase, keys in PHASES.items():
        total = 0.0
        for (file, _line, name), (_cc, _nc, _tt, ct, callers) in stats.items():
            if any(file.endswith(f) and name == n for f, n in keys):
                # count a function only where no caller is itself counted in this phase (no double counting)
                if not any(any(cf.endswith(f) and cn == n for f, n in keys) for (cf, _l, cn) in callers):
                    total += ct
        out[phase] = total
    return out


@contextlib.contextmanager
def _sampler(kind: str):
    """``multinomial``: the policy draws with torch.multinomial (the earlier code path)."""
    import hero_gym.agents.policy as P

    orig = P.sample_tokens
    if kind == "multinomial":
        P.sample_tokens = lambda probs, generator=None: torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    try:
        yield
    finally:
        P.sample_tokens = orig


def _profiled(fn) -> tuple[Any, float, dict[str, float]]:
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        res = fn()
    finally:
        prof.disable()
    return res, time.perf_counter() - t0, _phase_seconds(prof)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu-long")
    ap.add_argument("--method", default="hero_rules")
    ap.add_argument("--eval-goals", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sampler", choices=["both", "multinomial", "inverse-cdf"], default="both")
    ap.add_argument("--json", help="also write the numbers to this file")
    ap.add_argument("--bench-arg", action="append", default=[], metavar="ARG",
                    help="an extra benchmark flag (repeatable), e.g. --bench-arg=--model --bench-arg=tiny")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from hero_gym.agents.bench import parse_args
    from hero_gym.agents.bench.protocol import Bench
    from hero_gym.agents.trainer import TrainConfig, evaluate, train

    opts = parse_args(["--preset", a.preset, "--seeds", "0", "--methods", a.method, *a.bench_arg])
    with tempfile.TemporaryDirectory(prefix="hero_gym_profile_") as tmp:
        bench = Bench(opts, __import__("pathlib").Path(tmp), log=lambda s: None)
        setup = bench.setups["WebShop"]
        samplers = ["multinomial", "inverse-cdf"] if a.sampler == "both" else [a.sampler]
        results: dict[str, Any] = {"preset": a.preset, "method": a.method, "threads": a.threads,
                                   "load_before": os.getloadavg()[0], "torch": torch.__version__}
        for kind in samplers:
            policy = bench.source.policy(setup, 0)
            cfg = TrainConfig(env_id=setup.env_id, env_kwargs=setup.train_kwargs, turn_budget=1, max_turns=setup.max_turns,
                              task_indices=list(range(setup.train_tasks)), tasks_per_update=opts.tasks_per_update,
                              group_size=opts.group_size, max_new_tokens=opts.max_new_tokens, lr=opts.lr,
                              tool_prompt=opts.tool_prompt, seed=0, progress=False, method=a.method,
                              checkpoint_dir=f"{tmp}/{kind}", snapshot_budgets=[])
            with _sampler(kind):
                res, secs, phases = _profiled(lambda: train(policy, cfg))
                turns = res.turns_used
                ev, esecs, ephases = _profiled(lambda: evaluate(policy, setup.env_id, setup.eval_kwargs,
                                                                task_indices=list(range(a.eval_goals)),
                                                                max_turns=setup.max_turns, num_envs=a.eval_goals,
                                                                max_new_tokens=opts.max_new_tokens,
                                                                tool_prompt=opts.tool_prompt))
            eturns = sum(len(e.turns) for e in ev.episodes)
            m = res.metrics[-1]
            results[kind] = {
                "train": {"seconds": secs, "turns": turns, "per_turn": secs / max(1, turns), "phases": phases,
                          "trainer_seconds": m.get("seconds", {})},
                "eval": {"seconds": esecs, "goals": a.eval_goals, "turns": eturns, "per_turn": esecs / max(1, eturns),
                         "phases": ephases}}
            del policy
        results["load_after"] = os.getloadavg()[0]

    for kind in samplers:
        r = results[kind]
        for part in ("train", "eval"):
            p = r[part]
            print(f"{kind:12s} {part:5s}: {p['seconds']:7.1f} s, {p['turns']} turns, {p['per_turn']:.2f} s/turn | "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in p["phases"].items()))
            if p.get("trainer_seconds"):
                print(" " * 20 + "trainer's own split: " + ", ".join(f"{k} {v:.1f} s" for k, v in p["trainer_seconds"].items()))
    if len(samplers) == 2:
        for part in ("train", "eval"):
            before, after = results["multinomial"][part], results["inverse-cdf"][part]
            print(f"{part}: per turn {before['per_turn']:.2f} s -> {after['per_turn']:.2f} s "
                  f"(x{before['per_turn'] / max(after['per_turn'], 1e-9):.2f}); sampling "
                  f"{before['phases']['sampling']:.1f} s -> {after['phases']['sampling']:.1f} s")
    print(f"load average before/after: {results['load_before']:.2f} / {results['load_after']:.2f}; threads {a.threads}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
