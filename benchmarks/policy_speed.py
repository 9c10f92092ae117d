"""Policy speed on this machine: default-model conversion and cached load, tokens/s batched vs unbatched.

Usage: ``python benchmarks/policy_speed.py [--batch 8] [--new-tokens 48] [--threads N] [--skip-convert]``

* conversion: ``load_default_model()`` with an empty temporary ``HERO_GYM_CACHE`` (GGUF -> safetensors);
* cached load: ``load_default_model()`` again from that cache;
* generation: ``HFPolicy.generate`` on ``--batch`` chat contexts, once as one batched call and once as
  ``--batch`` single-context calls, reporting generated tokens per second for each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (1 is much faster when other processes share the cores)")
    ap.add_argument("--skip-convert", action="store_true", help="use the existing cache instead of a cold one")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hero_gym.agents.models import load_default_model
    from hero_gym.agents.policy import HFPolicy, SamplingConfig
    from hero_gym.chat import ChatRenderer

    rows = []
    if not args.skip_convert:
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("HERO_GYM_CACHE")
            os.environ["HERO_GYM_CACHE"] = tmp
            try:
                t0 = time.perf_counter()
                load_default_model()
                rows.append(("default model: GGUF conversion + first load", f"{time.perf_counter() - t0:.1f} s"))
                t0 = time.perf_counter()
                load_default_model()
                rows.append(("default model: cached load", f"{time.perf_counter() - t0:.2f} s"))
            finally:
                if old is None:
                    os.environ.pop("HERO_GYM_CACHE", None)
                else:
                    os.environ["HERO_GYM_CACHE"] = old
    t0 = time.perf_counter()
    model, tok = load_default_model()
    rows.append(("default model: load (user cache)", f"{time.perf_counter() - t0:.2f} s"))
    policy = HFPolicy(model, tok, lora="default")
    r = ChatRenderer(tok)
    topics = ["the sea", "a city at night", "mountains", "an old library", "rain", "a train journey", "autumn",
              "a robot", "the desert", "a market"]
    ctxs = [r.prompt_ids([{"role": "user", "content": f"Write a long story about {topics[i % len(topics)]}."}])
            for i in range(args.batch)]
    sc = SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0, seed=0)
    policy.generate(ctxs[:1], SamplingConfig(max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    gens = policy.generate(ctxs, sc)
    tb = time.perf_counter() - t0
    nb = sum(len(g.token_ids) for g in gens)
    t0 = time.perf_counter()
    singles = [policy.generate([c], sc)[0] for c in ctxs]
    tu = time.perf_counter() - t0
    nu = sum(len(g.token_ids) for g in singles)
    rows.append((f"generate batched ({args.batch} contexts, one call)", f"{nb / tb:.1f} tok/s ({nb} tok, {tb:.1f} s)"))
    rows.append((f"generate unbatched ({args.batch} calls)", f"{nu / tu:.1f} tok/s ({nu} tok, {tu:.1f} s)"))
    rows.append(("speed-up", f"{(nb / tb) / (nu / tu):.1f}x"))
    rows.append(("torch threads / device", f"{torch.get_num_threads()} / {policy.device}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
