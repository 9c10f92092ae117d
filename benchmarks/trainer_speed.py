"""Trainer speed benchmark (CPU): teacher scoring, HERO vs GRPO update time and peak memory.

Prints, from one run:

1. teacher scoring time on 10-turn episodes: the trainer's path (a KV cache of the shared prefix
   with the teacher's weights, then the turns' note/action queries, a few turns per forward) vs
   naive per-turn re-encoding                                            (target >= 3x);
2. one HERO update (default config: EMA teacher, JSD, student top-100) vs one GRPO update on the
   same batch                                                            (target <= 1.5x), with the
   teacher/student split ``update`` logs;
3. peak memory of each update, measured in a fresh subprocess each as the peak RSS above the
   RSS right before the update (a sampling thread, 2 ms period)          (target HERO <= 1.1x GRPO,
   and <= 4 GB above baseline for the 135M model).

Episodes are synthetic but rendered with the real chat template exactly as rollouts build them
(system prompt with tool descriptions, tool-call actions, tool observations; every context a prefix
of the next), so the token counts are realistic. No generation is run.

Usage::

    python benchmarks/trainer_speed.py                 # SmolLM2-135M-Instruct (the default model)
    python benchmarks/trainer_speed.py --model tiny    # a tiny random model (smoke run)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import torch


def _load(model_name: str) -> Any:
    from hero_gym.agents.models import load_default_model, load_default_tokenizer, tiny_model
    from hero_gym.agents.policy import HFPolicy

    if model_name == "tiny":
        tok = load_default_tokenizer()
        model = tiny_model(tok, num_layers=4, hidden_size=128, intermediate_size=256)
    else:
        model, tok = load_default_model(device="cpu")
    torch.manual_seed(0)
    return HFPolicy(model, tok, lora="default", device="cpu")


WORDS = ("order item account user status address payment refund exchange product shipping size color "
         "price cancel confirm pending delivered return number email name zip city").split()


def make_episodes(policy: Any, n_episodes: int, n_turns: int, seed: int = 0) -> tuple[list[Any], list[list[str]]]:
    """Episodes rendered incrementally with the chat template (like the rollout), plus HERO-style notes."""
    from hero_gym.chat import ChatRenderer
    from hero_gym.records import Episode, Turn

    rng = random.Random(seed)
    r = ChatRenderer(policy.tokenizer)
    tools = "\n".join(json.dumps({"name": f"tool_{k}", "description": " ".join(rng.choices(WORDS, k=12)),
                                  "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}})
                      for k in range(6))
    system = "You are a retail support agent. Follow the policy.\n# Tools\n" + tools
    eps, notes = [], []
    for e in range(n_episodes):
        msgs = [{"role": "system", "content": system},
                {"role": "user", "content": "Hi, I need help with " + " ".join(rng.choices(WORDS, k=20))}]
        ctx = r.prompt_ids(msgs)
        turns, ns = [], []
        for t in range(n_turns):
            text = '<tool_call>\n{"name": "tool_%d", "arguments": {"id": "%s"}}\n</tool_call>' % (
                rng.randrange(6), " ".join(rng.choices(WORDS, k=rng.randrange(6, 14))))
            act = r.encode(text) + [r.end_of_turn_id]
            obs = json.dumps({w: rng.randrange(1000) for w in rng.sample(WORDS, 14)})
            turns.append(Turn(index=t, action_text=text, observation=obs, context_token_ids=list(ctx),
                              action_token_ids=act, action_logprobs=[-1.0] * len(act)))
            ns.append("Hindsight note on your next action: " + " ".join(rng.choices(WORDS, k=25)))
            msgs = msgs + [{"role": "assistant", "content": text}]
            ctx = ctx + act + r.continuation_ids(msgs, [{"role": "tool", "content": obs}], sampled_ids=act)
            msgs = msgs + [{"role": "tool", "content": obs}]
        turns[-1].terminated = True     # finished episodes: GRPO trains on them (unfinished ones it skips)
        eps.append(Episode(env_id="bench", task_id=f"task{e // 2}", initial_observation=msgs[1]["content"],
                           turns=turns, total_reward=float(e % 2), success=bool(e % 2)))
        notes.append(ns)
    return eps, notes


def _timeit(fn, repeat: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_scoring(policy: Any, eps: list[Any], notes: list[list[str]], repeat: int) -> dict[str, float]:
    from hero_gym.agents.scoring import (build_layout, student_logits, teacher_logits_from_cache,
                                         teacher_logits_naive, teacher_logits_prefix_cache)
    from hero_gym.agents.teachers import TeacherWeights
    from hero_gym.agents.update import _renderer_for, teacher_contexts_for

    tctx = teacher_contexts_for(_renderer_for(policy), eps, notes)
    lay = build_layout(eps)
    model = policy.model
    with torch.no_grad():   # warm-up (first-call allocations) on one short turn
        model(input_ids=torch.tensor([tctx[0][0][:64]]))
    naive = _timeit(lambda: teacher_logits_naive(model, eps, tctx, lay), repeat, warmup=False)
    with torch.no_grad():   # the student forward the update runs anyway provides the prefix KV
        _, _, cache = student_logits(model, eps, lay, return_cache=True)
    kv = _timeit(lambda: teacher_logits_from_cache(model, eps, tctx, lay, cache), repeat, warmup=False)
    del cache
    ema = TeacherWeights(model, "ema")

    def trainer_path():   # what update() runs: EMA weights swapped in, prefix KV + blocks, lazy projection
        with torch.no_grad(), ema.active():
            return teacher_logits_prefix_cache(model, eps, tctx, lay, as_hidden=True)

    prefix = _timeit(trainer_path, repeat, warmup=False)
    a, ma = teacher_logits_prefix_cache(model, eps, tctx, lay)
    b, mb = teacher_logits_naive(model, eps, tctx, lay)
    err = (a[ma] - b[mb]).abs().max().item()
    packed_tokens = sum(len(c.sequence) for c in lay.chains) + sum(
        len(tctx[s.episode][s.turn]) - s.context_len + s.length for s in lay.spans)
    naive_tokens = sum(len(tctx[s.episode][s.turn]) + s.length for s in lay.spans)
    return {"naive_s": naive, "max_abs_logit_diff": err,
            "kv_s": kv, "kv_speedup": naive / kv, "prefix_s": prefix, "prefix_speedup": naive / prefix,
            "packed_tokens_upper": packed_tokens, "naive_tokens": naive_tokens}


def _one_update(policy: Any, eps: list[Any], notes: list[list[str]], method: str) -> Any:
    from hero_gym.agents.trainer import TrainConfig, update

    cfg = TrainConfig(method=method)   # the defaults: one episode per forward, gradient checkpointing
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=0.0)  # lr 0: weights stay put between repeats
    return lambda: update(policy, opt, eps, notes if method != "grpo" else None, cfg)


def bench_updates(policy: Any, eps: list[Any], notes: list[list[str]], repeat: int) -> dict[str, Any]:
    """Median update times, plus the phase split ``update`` logged on its last run (``UpdateStats.seconds``:
    teacher = the no-grad teacher passes, student = forward + backward with the loss)."""
    out: dict[str, Any] = {}
    for method in ("hero", "grpo"):
        fn = _one_update(policy, eps, notes, method)
        last: dict[str, Any] = {}

        def run() -> None:
            last["stats"] = fn()

        out[f"{method}_s"] = _timeit(run, repeat)
        out[f"{method}_split"] = last["stats"].seconds
    out["ratio"] = out["hero_s"] / out["grpo_s"]
    return out


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def measure_memory(model_name: str, method: str, n_episodes: int, n_turns: int) -> dict[str, float]:
    """Runs in a fresh subprocess: peak RSS above the pre-update RSS during one update."""
    policy = _load(model_name)
    eps, notes = make_episodes(policy, n_episodes, n_turns)
    fn = _one_update(policy, eps, notes, method)
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    fn()
    stop.set()
    th.join()
    peak[0] = max(peak[0], _rss())
    return {"method": method, "base_mb": base / 2**20, "peak_mb": peak[0] / 2**20, "delta_mb": (peak[0] - base) / 2**20}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default' (SmolLM2-135M) or 'tiny'")
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--_memory", choices=["hero", "grpo"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory:
        print(json.dumps(measure_memory(args.model, args._memory, args.episodes, args.turns)))
        return

    t0 = time.perf_counter()
    policy = _load(args.model)
    eps, notes = make_episodes(policy, args.episodes, args.turns)
    ctx_lens = [len(e.turns[-1].context_token_ids) for e in eps]
    n_act = sum(len(t.action_token_ids) for e in eps for t in e.turns)
    print(f"# trainer_speed: model={args.model} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"episodes={args.episodes} turns={args.turns} final_context_tokens~{int(statistics.mean(ctx_lens))} "
          f"action_tokens={n_act}")
    s = bench_scoring(policy, eps, notes, args.repeat)
    print(f"teacher scoring (target >= 3x vs naive)\n"
          f"  naive per-turn re-encoding                          {s['naive_s']:8.3f}s\n"
          f"  trainer path: EMA teacher, prefix KV + blocks       {s['prefix_s']:8.3f}s  {s['prefix_speedup']:.2f}x"
          f"   [what update() runs]\n"
          f"  reference: blocks on the student's own KV           {s['kv_s']:8.3f}s  {s['kv_speedup']:.2f}x\n"
          f"  [tokens encoded {s['packed_tokens_upper']} vs naive {s['naive_tokens']}; "
          f"max |trainer path - naive logit| {s['max_abs_logit_diff']:.2e}]")
    u = bench_updates(policy, eps, notes, args.repeat)
    print(f"update time (default config: EMA teacher, JSD, top-100)  HERO {u['hero_s']:.3f}s  GRPO {u['grpo_s']:.3f}s  ratio {u['ratio']:.2f}x (target <= 1.5x)")
    hs, gs = u["hero_split"], u["grpo_split"]
    print(f"  split of the last run: HERO teacher {hs.get('teacher', 0):.3f}s + student {hs.get('student', 0):.3f}s; "
          f"GRPO teacher {gs.get('teacher', 0):.3f}s + student {gs.get('student', 0):.3f}s")
    del policy
    mem = {}
    for m in ("hero", "grpo"):
        cmd = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--episodes", str(args.episodes),
               "--turns", str(args.turns), "--_memory", m] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd,
                             capture_output=True, text=True, check=True)
        mem[m] = json.loads(out.stdout.strip().splitlines()[-1])
    h, g = mem["hero"], mem["grpo"]
    print(f"peak memory      HERO +{h['delta_mb']:.0f} MB (peak RSS {h['peak_mb']:.0f} MB)  GRPO +{g['delta_mb']:.0f} MB "
          f"(peak RSS {g['peak_mb']:.0f} MB)  ratio {h['delta_mb'] / max(g['delta_mb'], 1e-9):.2f}x above baseline, "
          f"{h['peak_mb'] / g['peak_mb']:.2f}x total (target <= 1.1x); HERO +{h['delta_mb'] / 1024:.2f} GB "
          f"above baseline (target <= 4 GB)")
    print(f"# total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
