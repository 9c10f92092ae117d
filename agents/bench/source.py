"""The starting weights of a benchmark: the base model per env, warm-started when asked (built once per
setting by :mod:`hero_gym.agents.warmstart` and cached), and a fresh LoRA per training run."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict
from typing import Any

from .presets import EnvSetup, Options

__all__ = ["ModelSource"]


class ModelSource:
    """The base weights per env (warm-started when asked), loaded once; each run gets a deep copy
    with a fresh LoRA adapter."""

    def __init__(self, opts: Options):
        self.opts = opts
        self._bases: dict[str, tuple[Any, Any]] = {}
        self.warm_start_info: dict[str, dict[str, Any]] = {}

    def base(self, setup: EnvSetup) -> tuple[Any, Any]:
        key = setup.name if self.opts.warm_start else "_raw"
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

        # the same env settings, turn cap, reply cap and tool prompt as the runs that start from it
        wanted = {"env_id": setup.env_id, "env_kwargs": {k: v for k, v in setup.train_kwargs.items() if k != "split"},
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
        """A fresh trainable policy (deep copy of the base, new LoRA initialised from ``seed``)."""
        import torch

        from hero_gym.agents import HFPolicy

        base, tok = self.base(setup)
        torch.manual_seed(seed)
        return HFPolicy(copy.deepcopy(base), tok, device=self.opts.device)

    def release(self) -> None:
        """Drop the loaded base models (the warm-start records stay)."""
        self._bases.clear()

    def identity(self, setup: EnvSetup) -> dict[str, Any]:
        """What the starting weights are, for fingerprints (the warm start's settings, not its timing).
        With a warm start this loads (or builds) it first, so the answer does not depend on call order."""
        ident: dict[str, Any] = {"model": self.opts.model, "warm_start": self.opts.warm_start}
        if self.opts.warm_start:
            if setup.name not in self.warm_start_info:
                self.base(setup)
            ident["warm_start_config"] = self.warm_start_info[setup.name].get("config")
        return ident

