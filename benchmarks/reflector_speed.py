"""Wall time of the model reflector on one training batch (its token budget scales with the turns).

Collects one batch the way ``train`` does with the README's "Training with HERO" settings (``TrainConfig``
defaults: 2 tasks x 4 rollouts, 128 new tokens, temperature 1, on ``hero_gym/Lookup-v0``), then times
:class:`~hero_gym.agents.reflector.LLMReflector` on it twice with the same policy: with the defaults
(``reflection_budget``: 32 + 80 tokens per turn, one retry asking only for the missing turns) and with
the old flat budget (768 new tokens for every episode, same retries). Prints the turns, the budgets, the seconds and the
turns covered.

    python benchmarks/reflector_speed.py --model tiny        # a random 2-layer model (seconds)
    python benchmarks/reflector_speed.py --model smollm2     # SmolLM2-135M-Instruct (minutes on a CPU)
"""

from __future__ import annotations

import argparse
import time

import torch

from hero_gym.agents.models import load_default_model, load_default_tokenizer, tiny_model
from hero_gym.agents.policy import HFPolicy, SamplingConfig
from hero_gym.agents.reflector import LLMReflector, reflection_budget
from hero_gym.agents.rollout import collect
from hero_gym.agents.trainer import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--env", default="hero_gym/Lookup-v0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-old", action="store_true", help="time only the new defaults")
    ap.add_argument("--retries", type=int, default=None, help="reflector retries (default: TrainConfig's)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.model == "tiny":
        tok = load_default_tokenizer()
        model = tiny_model(tok, seed=0)
    else:
        model, tok = load_default_model(device="cpu")
    policy = HFPolicy(model, tok, lora=None, device="cpu")
    cfg = TrainConfig(env_id=a.env)
    t0 = time.perf_counter()
    episodes = collect(policy, a.env, cfg.tasks_per_update, group_size=cfg.group_size, seed=a.seed,
                       sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                               seed=a.seed),
                       max_context_tokens=model.config.max_position_embeddings)
    rollout_s = time.perf_counter() - t0
    turns = [len(ep.turns) for ep in episodes]
    print(f"model={a.model} env={a.env} threads={a.threads} episodes={len(episodes)} turns={turns} "
          f"rollouts={rollout_s:.1f}s")
    runs = [("new defaults", {})]
    if not a.skip_old:
        runs.append(("old flat 768", {"tokens_per_turn": 768, "base_tokens": 0, "max_new_tokens": 768}))
    for label, kw in runs:
        retries = cfg.reflector_retries if a.retries is None else a.retries
        reflector = LLMReflector(policy, max_retries=retries, **kw)
        budgets = [reflection_budget(n, **{k: v for k, v in kw.items()}) for n in turns]
        torch.manual_seed(a.seed)
        t0 = time.perf_counter()
        out = reflector.reflect(episodes)
        dt = time.perf_counter() - t0
        covered = sum(len(r.turns) for r in out)
        print(f"{label} (retries={retries}): budgets={budgets} attempts={[r.attempts for r in out]} reflect={dt:.1f}s "
              f"turns covered={covered}/{sum(turns)}")


if __name__ == "__main__":
    main()
