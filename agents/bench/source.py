"""The starting weights of a benchmark: the base model per env, warm-started when asked (built once per
setting by :mod:`hero_gym.agents.warmstart` and cached), one policy on it per process with a fresh LoRA per
training run, and the rollout backend (``--rollout``)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from typing import Any

from .presets import EnvSetup, Options

__all__ = ["ModelSource"]


class ModelSource:
    """The base weights per env (warm-started when asked), loaded once per process; every run trains the
    same policy on them with a fresh LoRA adapter (no copy of the model per run)."""

    def __init__(self, opts: Options):
        self.opts = opts
        self._bases: dict[str, tuple[Any, Any]] = {}
        self._policies: dict[str, Any] = {}
        self._rollouts: dict[str, Any] = {}
        self.warm_start_info: dict[str, dict[str, Any]] = {}

    def _key(self, setup: EnvSetup) -> str:
        return setup.name if self.opts.warm_start else "_raw"

    def base(self, setup: EnvSetup) -> tuple[Any, Any]:
        key = self._key(setup)
        if key not in self._bases:
            if self.opts.warm_start:
                self._bases[key] = self._warm_started(setup)
            else:
                from hero_gym.agents import load_named_model

                self._bases[key] = load_named_model(self.opts.model, device=self.opts.device)
        return self._bases[key]

    def _warm_started(self, setup: EnvSetup) -> tuple[Any, Any]:
        """The warm start for this env (``hero_gym.agents.warmstart``: built once per setting, cached),
        or the raw model, recorded as such, for an env the warm start has no expert for."""
        from hero_gym.agents import warmstart as ws

        # the same env settings, turn cap, reply cap and tool prompt as the runs that start from it; the warm
        # start picks the training split itself where the env's reset takes one (WebShop, Tau-bench), and an
        # env with a constructor-only split (Lookup) keeps its training split, so no held-out task is cloned
        wanted = {"env_id": setup.env_id, "env_kwargs": _warm_start_env_kwargs(setup),
                  "max_new_tokens": self.opts.max_new_tokens, "max_turns": setup.max_turns,
                  "eval_max_turns": setup.max_turns, "tool_prompt": self.opts.tool_prompt, "progress": True,
                  **self.opts.warm_start_overrides}
        names = {f.name for f in dataclasses.fields(ws.WarmStartConfig)}
        unknown = sorted(set(self.opts.warm_start_overrides) - names)
        if unknown:
            raise SystemExit(f"--warm-start-config: unknown WarmStartConfig field(s) {unknown}; valid: {sorted(names)}")
        t0 = time.perf_counter()
        try:
            cfg = ws.WarmStartConfig(**{k: v for k, v in wanted.items() if k in names})
            path = ws.warm_start(cfg, base=self.opts.model, device=self.opts.device)
        except (ValueError, NotImplementedError) as e:
            if "expert" not in str(e).lower() and "env" not in str(e).lower():
                raise
            self.warm_start_info[setup.name] = {"path": None, "unavailable": str(e)}
            from hero_gym.agents import load_named_model

            return load_named_model(self.opts.model, device=self.opts.device)
        from hero_gym.agents import load_model

        model, tok = load_model(str(path), device=self.opts.device)
        report = ws.read_report(path)
        self.warm_start_info[setup.name] = {
            "path": str(path), "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
            "report": {k: v for k, v in report.items() if k in ("eval", "train_seconds", "total_seconds")},
            "seconds_this_run": time.perf_counter() - t0}
        return model, tok

    def policy(self, setup: EnvSetup, seed: int) -> Any:
        """The trainable policy of a run: one :class:`~hero_gym.agents.HFPolicy` per base model in this
        process (no copy of the base weights), its LoRA adapter re-drawn from ``seed`` for every run
        (:meth:`~hero_gym.agents.HFPolicy.reset_adapter`: ``B = 0``, so a fresh run starts at the base)."""
        import torch

        from hero_gym.agents import HFPolicy

        key = self._key(setup)
        if key not in self._policies:
            base, tok = self.base(setup)
            self._policies[key] = HFPolicy(base, tok, device=self.opts.device)
        torch.manual_seed(seed)
        policy = self._policies[key]
        policy.reset_adapter(seed)
        return policy

    def rollout(self, setup: EnvSetup) -> Any | None:
        """The rollout backend of ``--rollout``: ``None`` for ``hf``; for ``vllm`` one
        :class:`~hero_gym.agents.VLLMPolicy` per base model in this process, on the model's directory (the
        warm start's when there is one), with the base tokenizer."""
        if self.opts.rollout == "hf":
            return None
        key = self._key(setup)
        if key not in self._rollouts:
            from hero_gym.agents.vllm_policy import make_rollout_policy

            _, tok = self.base(setup)
            path = (self.warm_start_info.get(setup.name) or {}).get("path") if self.opts.warm_start else None
            self._rollouts[key] = make_rollout_policy(self.opts.rollout, path or self.opts.model, tok)
        return self._rollouts[key]

    def release(self) -> None:
        """Drop the loaded base models and policies (the warm-start records stay)."""
        self._bases.clear()
        self._policies.clear()
        self._rollouts.clear()

    def identity(self, setup: EnvSetup) -> dict[str, Any]:
        """What the starting weights are, for fingerprints (the warm start's settings, not its timing).
        With a warm start this loads (or builds) it first, so the answer does not depend on call order."""
        ident: dict[str, Any] = {"model": self.opts.model, "warm_start": self.opts.warm_start}
        if self.opts.warm_start:
            if setup.name not in self.warm_start_info:
                self.base(setup)
            ident["warm_start_config"] = self.warm_start_info[setup.name].get("config")
        return ident


def _warm_start_env_kwargs(setup: EnvSetup) -> dict[str, Any]:
    """The training env's kwargs for the warm start: without ``split`` when the env's reset selects splits."""
    import hero_gym

    env = hero_gym.make(setup.env_id, **setup.train_kwargs)
    try:
        reset_splits = bool(env.unwrapped.splits())
    finally:
        env.close()
    return {k: v for k, v in setup.train_kwargs.items() if k != "split" or not reset_splits}
