"""Per-phase wall time of the mechanism probe (``hero-gym probe``) and its cost per turn, before and after the
fast paths, on the same rollouts.

Phases: **rollouts** (``collect`` at T=1.0 with the oracle recorder; ``--slots``: episodes sampled together,
4 = before, 8 = the default now), **notes** (oracle demos, rule reflector, every row's notes), **scoring**
(``tree``: all rows of a turn in one token trie, the default now, at each ``--group`` size; ``reference``: one
pass per note row, 384 query tokens per forward, as before), **statistics** (the episode-clustered bootstrap
summary) and **report** (``probe.md``, CSV, JSON, plot, examples). The scoring paths are compared on the
same episodes and notes: the largest difference of any Δ / signal between them is printed (float rounding only).

    python benchmarks/probe_speed.py --model tiny --env hero_gym/Lookup-v0 --episodes 4      # seconds
    HERO_GYM_CACHE=... python benchmarks/probe_speed.py --episodes 4 --threads 2            # the benchmark's warm start
    HERO_GYM_CACHE=... python benchmarks/probe_speed.py --model pilot --episodes 4          # the issue's pilot warm start

``--model benchws`` is the ``default``/``cpu`` presets' WebShop warm start (120 demonstrations + 1 recovery
round), ``pilot`` the issue's 40-demonstration one, ``raw`` SmolLM2-135M-Instruct; the env, note styles and
lengths are the committed probe runs' (``docs/results/probe/README.md``). Extrapolation to N episodes:
``rollouts/episode * N + scoring/turn * turns_per_episode * N`` (printed for ``--extrapolate``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

WARM = {"benchws": {"episodes": 120, "noise": 0.1, "recovery_rounds": 1, "recovery_episodes": 30, "eval_goals": 0},
        "pilot": {"episodes": 40, "noise": 0.1, "recovery_rounds": 0, "eval_goals": 0}}


def _model(name: str, env_id: str, env_kwargs: dict, max_turns: int, max_new_tokens: int):
    """``(model, tokenizer, tasks the warm start saw)``."""
    from hero_gym.agents.models import load_default_tokenizer, load_named_model, tiny_model

    if name == "tiny":
        tok = load_default_tokenizer()
        return tiny_model(tok, seed=0), tok, []
    if name == "raw":
        m, tok = load_named_model("smollm2")
        return m, tok, []
    from hero_gym.agents.probe_cli import warm_start_seen_tasks
    from hero_gym.agents.warmstart import WarmStartConfig, load_warm_started

    w = WarmStartConfig(env_id=env_id, env_kwargs=env_kwargs, max_new_tokens=max_new_tokens, max_turns=max_turns,
                        eval_max_turns=max_turns, tool_prompt="compact", **WARM[name])
    m, tok = load_warm_started(w)
    return m, tok, warm_start_seen_tasks(env_id, w)


def _max_diff(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        for row, cx in x["rows"].items():
            cy = y["rows"][row]
            if (cx is None) != (cy is None):
                return float("inf")
            for k in ("d_action", "d_oracle", "signal"):
                if cx is not None and cx[k] is not None:
                    worst = max(worst, abs(cx[k] - cy[k]))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["benchws", "pilot", "raw", "tiny"], default="benchws")
    ap.add_argument("--env", default="hero_gym/WebShop-v0")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slots", type=int, nargs="+", default=[4, 8], help="rollout slots to time (the last one's "
                    "episodes are scored)")
    ap.add_argument("--group", type=int, nargs="+", default=[384], help="trie nodes per forward (tree path)")
    ap.add_argument("--skip-reference", action="store_true", help="do not time the per-row reference scoring")
    ap.add_argument("--workers", type=int, default=1, help="episodes scored at once in the timed scoring passes, "
                    "one torch thread each (the probe's --scoring-workers)")
    ap.add_argument("--repeat", type=int, default=1, help="scoring runs per path (alternating order)")
    ap.add_argument("--extrapolate", type=int, default=40, help="print the projected time of this many episodes")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from hero_gym.agents.probe import ProbeConfig, probe_rollouts, run_probe
    from hero_gym.agents.probe_report import summarise, write_outputs
    from hero_gym.agents.probe_score import turn_records
    from hero_gym.chat import ChatRenderer

    webshop = a.env == "hero_gym/WebShop-v0"
    env_kwargs = {"max_results": 5, "instruction_once": True} if webshop else {}
    t = time.perf_counter()
    model, tok, skip = _model(a.model, a.env, env_kwargs, 8, 64)
    print(f"load model ({a.model}): {time.perf_counter() - t:.1f} s; {a.threads} torch thread(s); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    methods = ["envfb_sd", "full_demo", "hero_rules"]
    styles = ["legacy", "no_echo", "target_only"] if webshop else []
    cfg = ProbeConfig(env_id=a.env, env_kwargs=env_kwargs, methods=methods, episodes=a.episodes, skip_tasks=skip,
                      max_turns=8, max_new_tokens=64, model_reflector_episodes=0, note_styles=styles)
    rolled = None
    per_episode = {}
    for slots in a.slots:
        cfg.rollout_slots = slots
        t, c = time.perf_counter(), time.process_time()
        rolled = probe_rollouts(model, tok, cfg)
        dt, dc = time.perf_counter() - t, time.process_time() - c
        n = sum(len(e.turns) for e in rolled[0])
        per_episode[slots] = dc / len(rolled[0])
        print(f"rollouts, {slots} slots: {dt:.1f} s wall, {dc:.1f} s CPU; {len(rolled[0])} episodes, {n} turns: "
              f"{dc / n:.2f} CPU s/turn, {dc / len(rolled[0]):.1f} CPU s/episode", flush=True)
    turns = sum(len(e.turns) for e in rolled[0])
    cfg.group_tokens, cfg.tree_scoring = a.group[0], True
    t, c = time.perf_counter(), time.process_time()
    res = run_probe(model, tok, cfg, episodes=rolled)
    print(f"notes: {res.seconds['notes']:.1f} s; first tree scoring ({a.group[0]} nodes/forward): "
          f"{res.seconds['scoring']:.1f} s wall, {time.process_time() - c:.1f} s CPU; {len(res.rows)} note rows",
          flush=True)
    renderer = ChatRenderer(tok, check=False)
    paths = [(f"tree, {g} nodes/forward", g, True) for g in a.group]
    if not a.skip_reference:
        paths.append(("reference (a pass per row, 384 tokens/forward)", 384, False))
    cost: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in paths}
    for r in range(a.repeat):   # alternating order: the same contention on average
        for name, g, tree in (paths if r % 2 == 0 else paths[::-1]):
            t, c = time.perf_counter(), time.process_time()
            recs = turn_records(model, renderer, res.episodes, res.notes, *res.scoring_inputs, group_tokens=g,
                                tree=tree, workers=a.workers)
            cost[name].append((time.perf_counter() - t, time.process_time() - c))
            diff = _max_diff(res.turns, recs)
            print(f"  [{r + 1}/{a.repeat}] {name}: {cost[name][-1][0]:.1f} s wall, {cost[name][-1][1]:.1f} s CPU "
                  f"(largest |difference| from the first tree run {diff:.1e} nats; load {os.getloadavg()[0]:.1f})",
                  flush=True)
    print("scoring, per turn (mean over repeats):")
    med = {name: (sum(w for w, _ in v) / len(v), sum(c for _, c in v) / len(v)) for name, v in cost.items()}
    for name, (w, c) in med.items():
        print(f"  {name}: {w / turns:.2f} s wall, {c / turns:.2f} s CPU per turn")
    best = min(c for _, c in med.values()) / turns
    t = time.perf_counter()
    summary = summarise(res.turns, res.rows, n_boot=cfg.n_boot, seed=cfg.seed)
    t_stats = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        write_outputs(res, summary, {"env_id": a.env, "config": {"episodes": a.episodes}}, None, d)
    t_report = time.perf_counter() - t
    print(f"statistics (bootstrap {cfg.n_boot}): {t_stats:.1f} s; report files and plot: {t_report:.1f} s")
    n = a.extrapolate
    proj = per_episode[a.slots[-1]] * n + best * turns / len(res.episodes) * n + t_stats + t_report
    print(f"projected {n}-episode probe at {turns / len(res.episodes):.1f} turns/episode from CPU seconds (= wall "
          f"time on an idle machine with {a.threads} thread(s)): {proj:.0f} s (rollouts "
          f"{per_episode[a.slots[-1]] * n:.0f} s + scoring {best * turns / len(res.episodes) * n:.0f} s + "
          f"statistics/report); load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
