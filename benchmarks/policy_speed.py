"""Policy speed on this machine: model loading, batched generation, and multi-turn rollouts with and
without the per-slot KV cache.

Usage: ``python benchmarks/policy_speed.py [--batch 8] [--new-tokens 48] [--threads N] [--skip-convert]
[--rollout-only] [--episodes 4] [--num-envs 4] [--turns 8] [--rollout-new-tokens 64]
[--driver random|expert|model] [--model NAME_OR_PATH] [--env-kwarg KEY=VALUE] [--tool-prompt full|compact]``

* conversion: ``load_default_model()`` with an empty temporary ``HERO_GYM_CACHE`` (GGUF -> safetensors);
* cached load: ``load_default_model()`` again from that cache;
* generation: ``HFPolicy.generate`` on ``--batch`` chat contexts, once as one batched call and once as
  ``--batch`` single-context calls, reporting generated tokens per second for each;
* rollouts: ``collect`` of ``--episodes`` WebShop test episodes of at most ``--turns`` turns (``--num-envs``
  side by side, greedy, the default LoRA as in training), once re-encoding every context (``kv_cache=False``)
  once with the KV cache, and once with the KV cache and the prefix of episodes starting together encoded once
  (``HFPolicy.share_prefix``), reporting context tokens run through the model per episode
  (``HFPolicy.encoded_tokens``), wall and CPU time, the speed-ups, and whether every run sampled the same ids.
  ``--driver random`` (default) steps the env with a scripted random agent's actions (``expert``: the
  scripted expert's) while the model generates every reply, so the contexts hold real result and product
  pages as in a warm-started rollout; ``--driver model`` sends the model's own replies (an untrained model
  gets short error observations, so decoding dominates). On a shared machine the CPU time of this
  single-process run (``--threads 1``) is the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def load_rows(skip_convert: bool) -> list[tuple[str, str]]:
    from hero_gym.agents.models import load_default_model

    rows = []
    if skip_convert:
        return rows
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
    return rows


def generate_rows(policy, batch: int, new_tokens: int) -> list[tuple[str, str]]:
    from hero_gym.agents.policy import SamplingConfig
    from hero_gym.chat import ChatRenderer

    r = ChatRenderer(policy.tokenizer)
    topics = ["the sea", "a city at night", "mountains", "an old library", "rain", "a train journey", "autumn",
              "a robot", "the desert", "a market"]
    ctxs = [r.prompt_ids([{"role": "user", "content": f"Write a long story about {topics[i % len(topics)]}."}])
            for i in range(batch)]
    sc = SamplingConfig(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    t0 = time.perf_counter()
    gens = policy.generate(ctxs, sc)
    tb = time.perf_counter() - t0
    nb = sum(len(g.token_ids) for g in gens)
    t0 = time.perf_counter()
    singles = [policy.generate([c], sc)[0] for c in ctxs]
    tu = time.perf_counter() - t0
    nu = sum(len(g.token_ids) for g in singles)
    return [(f"generate batched ({batch} contexts, one call)", f"{nb / tb:.1f} tok/s ({nb} tok, {tb:.1f} s)"),
            (f"generate unbatched ({batch} calls)", f"{nu / tu:.1f} tok/s ({nu} tok, {tu:.1f} s)"),
            ("speed-up", f"{(nb / tb) / (nu / tu):.1f}x")]


def scripted(env, driver: str, seed: int):
    """``env`` stepped with a scripted WebShop agent's action whatever the model replied: the model still
    generates every reply (real decoding cost, its own tokens in the context), while the observations are
    result and product pages, as in a warm-started rollout, rather than the short error messages an
    untrained model's invalid actions get. ``driver``: ``"random"`` (searches, then clicks buttons at random:
    episodes usually run to the turn limit) or ``"expert"`` (knows the goal: buys after about 4 turns)."""
    import gymnasium as gym

    from hero_gym.envs.webshop.expert import ExpertAgent, RandomAgent

    class Scripted(gym.Wrapper):
        def reset(self, **kwargs):
            obs, info = self.env.reset(**kwargs)
            self.agent = ExpertAgent() if driver == "expert" else RandomAgent(seed)
            self.agent.reset(info)
            self.last = (obs, info)
            return obs, info

        def step(self, action):
            out = self.env.step(self.agent.act(*self.last))
            self.last = (out[0], out[4])
            return out

    return Scripted(env)


def rollout_rows(policy, episodes: int, num_envs: int, turns: int, new_tokens: int,
                 driver: str, env_kwargs: dict | None = None, tool_prompt: str = "full") -> list[tuple[str, str]]:
    import hero_gym
    from hero_gym.agents.policy import SamplingConfig
    from hero_gym.agents.rollout import TOOL_PROMPTS, collect

    sc = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
    runs = {}
    for mode in ("re-encoding", "KV cache", "KV cache + shared prefix"):
        envs = [hero_gym.make("hero_gym/WebShop-v0", max_turns=turns, split="test", **(env_kwargs or {}))
                for _ in range(num_envs)]
        if driver != "model":
            envs = [scripted(e, driver, seed=i) for i, e in enumerate(envs)]
        policy.share_prefix = mode.endswith("shared prefix")
        before = policy.encoded_tokens
        t0, c0 = time.perf_counter(), time.process_time()
        eps = collect(policy, envs, n_episodes=episodes, sampling=sc, kv_cache=mode != "re-encoding",
                      tool_prompt=TOOL_PROMPTS[tool_prompt])
        runs[mode] = (eps, policy.encoded_tokens - before, time.perf_counter() - t0, time.process_time() - c0)
    plain, enc_p, t_p, cpu_p = runs["re-encoding"]
    n_turns = sum(ep.num_turns for ep in plain)
    final_ctx = max(ep.metadata["context_tokens"] for ep in plain)
    cfg = policy.base_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * policy.dtype.itemsize
    setting = (f"{episodes} WebShop test episodes, {num_envs} envs, <= {turns} turns, greedy, <= {new_tokens} new "
               f"tokens, env actions from: {driver}, env kwargs {env_kwargs or {}}, {tool_prompt} tool prompt")
    rows = [("rollouts", setting),
            ("turns / longest final context", f"{n_turns} turns / {final_ctx} tokens"),
            ("tokens generated per turn", f"{sum(len(t.action_token_ids) for ep in plain for t in ep.turns) / n_turns:.0f}")]
    for mode, (eps, enc, t, cpu) in runs.items():
        fewer = "" if mode == "re-encoding" else f" ({enc_p / enc:.1f}x fewer)"
        rows.append((f"context tokens encoded per episode: {mode}", f"{enc / episodes:.0f}{fewer}"))
    for mode, (eps, enc, t, cpu) in runs.items():
        speed = "" if mode == "re-encoding" else f", {t_p / t:.2f}x"
        rows.append((f"rollout wall time: {mode}", f"{t:.1f} s ({t / n_turns:.2f} s/turn{speed})"))
    for mode, (eps, enc, t, cpu) in runs.items():
        speed = "" if mode == "re-encoding" else f", {cpu_p / cpu:.2f}x"
        rows.append((f"rollout CPU time: {mode}", f"{cpu:.1f} s{speed}"))
    same = all([t.action_token_ids for t in a.turns] == [t.action_token_ids for t in b.turns]
               for eps, *_ in runs.values() for a, b in zip(plain, eps))
    rows += [("same sampled ids in every run", "yes" if same else "NO"),
             ("KV cache per slot at the longest context", f"{final_ctx * kv_bytes / 2**20:.0f} MiB")]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (1 is much faster when other processes share the cores)")
    ap.add_argument("--skip-convert", action="store_true", help="use the existing cache instead of a cold one")
    ap.add_argument("--rollout-only", action="store_true", help="only the rollout comparison (implies --skip-convert)")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--rollout-new-tokens", type=int, default=64)
    ap.add_argument("--driver", choices=("random", "expert", "model"), default="random",
                    help="who picks the env actions: a scripted agent (random: 8-turn episodes over result and "
                         "product pages; expert: buys after ~4 turns; the model still generates every reply) or the "
                         "model's own replies (an untrained model's invalid actions get short error observations)")
    ap.add_argument("--model", default="smollm2",
                    help="smollm2 (embedded default) or a local path / HF id, e.g. a warm-started model directory "
                         "(whose replies are as short as a trained policy's)")
    ap.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                    help="WebShop constructor argument (VALUE is JSON when it parses), e.g. max_results=5")
    ap.add_argument("--tool-prompt", choices=("full", "compact"), default="full")
    args = ap.parse_args()
    from hero_gym.cli import json_or_str

    env_kwargs = {}
    for item in args.env_kwarg:
        key, eq, value = item.partition("=")
        if not eq or not key:
            ap.error(f"--env-kwarg wants KEY=VALUE, got {item!r}")
        env_kwargs[key] = json_or_str(value)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hero_gym.agents.models import load_named_model
    from hero_gym.agents.policy import HFPolicy, SamplingConfig

    rows = load_rows(args.skip_convert or args.rollout_only)
    t0 = time.perf_counter()
    model, tok = load_named_model(args.model)
    rows.append((f"model {args.model}: load (user cache)", f"{time.perf_counter() - t0:.2f} s"))
    policy = HFPolicy(model, tok, lora="default")
    policy.generate([[1, 2, 3]], SamplingConfig(max_new_tokens=4))  # warm-up
    if not args.rollout_only:
        rows += generate_rows(policy, args.batch, args.new_tokens)
    rows += rollout_rows(policy, args.episodes, args.num_envs, args.turns, args.rollout_new_tokens, args.driver,
                         env_kwargs, args.tool_prompt)
    rows.append(("torch threads / device", f"{torch.get_num_threads()} / {policy.device}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
