"""One warm-start build (:func:`hero_gym.agents.warmstart.warm_start` runs it on a cache miss): demonstrations,
behaviour cloning, DAgger rounds, then the float16 adapter kept and merged - resumable, with progress lines.

The recipe is described in :mod:`hero_gym.agents.warmstart`; this module holds its training loop, the resume
checkpoint (see :class:`_Build`) and the ETA lines (:class:`_Clock`).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hero_gym.agents import warmstart as ws
from hero_gym.agents import warmstart_files as files
from hero_gym.agents.experts import ExpertPolicy
from hero_gym.agents.models import load_named_model
from hero_gym.agents.policy import HFPolicy, SamplingConfig, default_lora_config
from hero_gym.agents.rollout import TOOL_PROMPTS, collect
from hero_gym.agents.trainer import require_master_weights

__all__ = ["round_adapter_"]


def round_adapter_(model: Any) -> None:
    """Round the LoRA weights of a PEFT ``model`` to float16 values, in place (they stay float32 tensors). The
    recipe does this before merging, so the float16 adapter file rebuilds exactly the merged weights."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(p.to(torch.float16).to(p.dtype))


class _Clock:
    """Steps done / total, seconds per step and the time left of one phase, as a log line every ``every``
    steps (and on the last one)."""

    def __init__(self, label: str, total: int, done: int, log: Any, every: int = 10):
        self.label, self.total, self.start_done, self.log, self.every = label, total, done, log, every
        self.t0 = time.perf_counter()

    def tick(self, done: int, loss: float) -> None:
        if done % self.every and done != self.total:
            return
        rate = (time.perf_counter() - self.t0) / max(1, done - self.start_done)
        left = max(0, self.total - done) * rate
        self.log(f"warm start: {self.label} step {done}/{self.total} ({100 * done / max(1, self.total):.0f}%), "
                 f"token loss {loss:.4f}, {rate:.1f} s/step, ETA {_duration(left)}")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


class _Build:
    """One warm-start build, resumable: the whole training state (adapter or weights, optimiser, random
    states, the pass in progress) is checkpointed to ``<key>.partial/`` at most every
    :data:`~hero_gym.agents.warmstart.CHECKPOINT_SECONDS`, after every phase and on Ctrl-C; a later call with the same settings
    continues from it and ends with the weights an uninterrupted build gives."""

    def __init__(self, cfg: ws.WarmStartConfig, base: str, key: str, target: Path, device: str | None, log: Any):
        self.cfg, self.base, self.key, self.target, self.device, self.log = cfg, base, key, target, device, log
        self.partial = target.with_name(f"{target.name}.partial")
        self.t_start = time.perf_counter()
        self.last_save = time.perf_counter()
        torch.manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        model, self.tokenizer = load_named_model(base, device=device)
        lora = (default_lora_config(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout)
                if cfg.lora_r > 0 else None)
        self.policy = HFPolicy(model, self.tokenizer, lora=lora, device=device)
        require_master_weights(self.policy.trainable_parameters())   # full fine-tuning of a bf16 model: refused
        self.optimizer = torch.optim.AdamW(self.policy.trainable_parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.state: dict[str, Any] = {"key": key, "seconds": 0.0, "passes": [], "rounds": [], "current": None,
                                      "report": {"recipe": ws.RECIPE_VERSION, "base": base, "config": cfg.key_fields()}}
        saved = files.load_checkpoint(self.partial, key)
        if saved is not None:
            self._restore(saved)

    # ------------------------------------------------------------------ checkpoints
    def _trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.policy.model.named_parameters() if p.requires_grad}

    def checkpoint(self) -> None:
        self.state["seconds"] += time.perf_counter() - self.t_start
        self.t_start = time.perf_counter()
        files.save_checkpoint(self.partial, {
            **self.state, "weights": {n: p.detach().cpu().clone() for n, p in self._trainable().items()},
            "optimizer": self.optimizer.state_dict(), "rng": self.rng.getstate(), "torch_rng": torch.get_rng_state()})
        self.last_save = time.perf_counter()

    def _restore(self, saved: dict[str, Any]) -> None:
        with torch.no_grad():
            for n, p in self._trainable().items():
                p.copy_(saved["weights"][n])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.rng.setstate(_as_tuple(saved["rng"]))
        torch.set_rng_state(saved["torch_rng"])
        self.state = {k: saved[k] for k in ("key", "seconds", "passes", "rounds", "current", "report")} | {
            "examples": saved.get("examples")}
        cur = self.state["current"]
        where = f"{cur['phase']} step {cur['steps']}" if cur else f"after {len(self.state['passes'])} pass(es)"
        self.log(f"warm start: resuming the interrupted build from {self.partial} ({where})")

    # ------------------------------------------------------------------ phases
    def run(self) -> Path:
        cfg, report = self.cfg, self.state["report"]
        if self.state.get("examples") is None:
            self._demonstrations()
        examples = [ws.Example(list(i), list(m)) for i, m in self.state["examples"]]
        steps_per_pass = -(-len(examples) // cfg.batch_episodes)
        n_clone = steps_per_pass * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_pass * cfg.epochs)
        rounds = (f"{cfg.recovery_rounds} DAgger round(s) of {cfg.recovery_episodes} rollouts"
                  if cfg.recovery_rounds and cfg.recovery_episodes else "no DAgger round")
        self.log(f"warm start plan: {n_clone} behaviour-cloning steps, then {rounds}; resumable from {self.partial}")
        # 2. behaviour cloning
        done = sum(int(p["steps"]) for p in self.state["passes"])
        for epoch in range(len(self.state["passes"]), cfg.epochs):
            if done >= n_clone:
                break
            stats = self._pass(f"clone{epoch}", examples, n_clone - done, "behaviour cloning", n_clone, done)
            self.state["passes"].append(stats)
            done += int(stats["steps"])
            self.checkpoint()
        report["clone"] = {"passes": self.state["passes"]}
        # 3. recovery rounds (DAgger)
        for r in range(len(self.state["rounds"]), cfg.recovery_rounds if cfg.recovery_episodes else 0):
            self.state["rounds"].append(self._recovery_round(r, examples))
            self.checkpoint()
        report["recovery"] = self.state["rounds"]
        return self._finish()

    def _demonstrations(self) -> None:
        import hero_gym

        cfg = self.cfg
        demo_kwargs = dict(cfg.env_kwargs)
        if cfg.demo_max_turns is not None:
            demo_kwargs["max_turns"] = cfg.demo_max_turns
        env = hero_gym.make(cfg.env_id, **demo_kwargs)
        t0 = time.perf_counter()
        self.log(f"warm start: {cfg.episodes} expert demonstrations")
        try:
            expert_policy = ExpertPolicy(env, self.tokenizer, noise=cfg.noise, seed=cfg.seed)
            demos = collect(expert_policy, env, tasks=ws._tasks(env, "train", cfg.episodes, cfg.seed, shuffle=True),
                            sampling=SamplingConfig(max_new_tokens=cfg.max_new_tokens),
                            tool_prompt=TOOL_PROMPTS[cfg.tool_prompt])
            examples = ws.build_examples(demos, self.tokenizer, expert_policy.noisy)
        finally:
            env.close()
        d = {"episodes": len(demos), "success_rate": sum(e.success for e in demos) / max(1, len(demos)),
             "turns": len(expert_policy.noisy), "noisy_turns": sum(expert_policy.noisy),
             "truncated_actions": expert_policy.truncated, "target_tokens": sum(sum(e.loss_mask) for e in examples),
             "seconds": time.perf_counter() - t0}
        self.state["report"]["demos"] = d
        self.state["examples"] = [(e.input_ids, e.loss_mask) for e in examples]
        self.log(f"warm start: {d['episodes']} expert episodes (success {d['success_rate']:.2f}, "
                 f"{d['noisy_turns']} noisy turns of {d['turns']})")
        self.checkpoint()

    def _recovery_round(self, r: int, examples: list[Example]) -> dict[str, Any]:
        import hero_gym

        cfg, phase = self.cfg, f"recovery{r}"
        cur = self.state["current"]
        if cur is None or cur["phase"] != phase:
            t0 = time.perf_counter()
            self.log(f"warm start: DAgger round {r + 1}/{cfg.recovery_rounds}: {cfg.recovery_episodes} greedy "
                     "rollouts of the fine-tuned model, labelled by the expert")
            roll_kwargs = {**cfg.env_kwargs, "max_turns": cfg.max_turns}
            env = hero_gym.make(cfg.env_id, **roll_kwargs)
            try:
                tasks = ws._tasks(env, "train", cfg.recovery_episodes, cfg.seed + 1 + r, shuffle=True)
                sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.recovery_temperature,
                                          seed=cfg.seed + 1 + r)
                rolled = collect(self.policy, cfg.env_id, tasks=tasks, sampling=sampling, env_kwargs=roll_kwargs,
                                 tool_prompt=TOOL_PROMPTS[cfg.tool_prompt], num_envs=8)
                rec, rstats = ws.recovery_examples(rolled, env, self.tokenizer)
            finally:
                env.close()
            n_turns = sum(len(e.turns) for e in rolled)
            valid = sum(1 for e in rolled for t in e.turns if not t.action_error)
            info = {"episodes": len(rolled), "success_rate": sum(e.success for e in rolled) / max(1, len(rolled)),
                    "valid_action_rate": valid / max(1, n_turns), **rstats,
                    "rollout_seconds": time.perf_counter() - t0}
            mix = rec + self.rng.sample(examples, min(len(examples), len(rec)))
            self.log(f"warm start: DAgger round {r + 1}: rollouts valid {info['valid_action_rate']:.2f}, success "
                     f"{info['success_rate']:.2f}; {rstats['labelled']} labelled states")
        else:   # resuming inside this round's training pass
            info, mix = cur["info"], [ws.Example(list(i), list(m)) for i, m in cur["examples"]]
        if not mix:
            return {**info, "train": {"steps": 0, "loss": 0.0}}
        extra = {"info": info, "examples": [(e.input_ids, e.loss_mask) for e in mix]}
        n = -(-len(mix) // cfg.batch_episodes)
        stats = self._pass(phase, mix, None, f"DAgger round {r + 1}", n, 0, extra)
        return {**info, "train": stats}

    def _pass(self, phase: str, examples: Sequence[Example], max_steps: int | None, label: str, total: int,
              done_before: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """One shuffled pass over ``examples`` (at most ``max_steps`` steps), resumed when the checkpoint
        stopped inside it; returns mean token loss, steps, target tokens and seconds."""
        cfg, model = self.cfg, self.policy.model
        cur = self.state["current"]
        if cur is None or cur["phase"] != phase:
            order = list(range(len(examples)))
            self.rng.shuffle(order)
            cur = {"phase": phase, "order": order, "pos": 0, "steps": 0, "tokens": 0, "total": 0.0, "seconds": 0.0,
                   **(extra or {})}
            self.state["current"] = cur
        clock = _Clock(label, total, done_before + cur["steps"], self.log)
        order, t0, updating = cur["order"], time.perf_counter() - cur["seconds"], False
        model.train()
        try:
            while cur["pos"] < len(order) and (max_steps is None or cur["steps"] < max_steps):
                batch = [examples[i] for i in order[cur["pos"]:cur["pos"] + cfg.batch_episodes]]
                n_tok = sum(sum(e.loss_mask) for e in batch)
                self.optimizer.zero_grad(set_to_none=True)
                batch_loss = 0.0
                for ex in batch:
                    loss, _ = ws.example_loss(model, ex, self.policy.device)
                    (loss / max(1, n_tok)).backward()
                    batch_loss += float(loss.detach())
                updating = True
                self.optimizer.step()
                cur.update(pos=cur["pos"] + len(batch), steps=cur["steps"] + 1, tokens=cur["tokens"] + n_tok,
                           total=cur["total"] + batch_loss, seconds=time.perf_counter() - t0)
                updating = False
                clock.tick(done_before + cur["steps"], cur["total"] / max(1, cur["tokens"]))
                if time.perf_counter() - self.last_save >= ws.CHECKPOINT_SECONDS:
                    self.checkpoint()
        except KeyboardInterrupt:
            if not updating:   # between two optimizer steps: the state is consistent, keep it
                self.checkpoint()
                self.log(f"warm start interrupted: {label} step {done_before + cur['steps']} kept in {self.partial}")
            raise
        finally:
            model.eval()
        self.state["current"] = None
        return {"loss": cur["total"] / max(1, cur["tokens"]), "steps": cur["steps"], "tokens": cur["tokens"],
                "seconds": cur["seconds"]}

    def _finish(self) -> Path:
        cfg, report, policy = self.cfg, self.state["report"], self.policy
        report["train_seconds"] = self.state["seconds"] + time.perf_counter() - self.t_start
        if policy.is_lora:
            round_adapter_(policy.model)
            files.save_adapter(self.partial / files.ADAPTER_DIR, policy.model)
            merged = policy.model.merge_and_unload()
        else:
            merged = policy.model
        merged.eval()
        for p in merged.parameters():
            p.requires_grad_(False)
        adapter = self.partial / files.ADAPTER_DIR if policy.is_lora else None
        files.save_model_dir(self.target, merged, self.tokenizer, report, adapter_from=adapter)
        self.log(f"warm-started model saved to {self.target} ({report['train_seconds']:.0f} s of training)")
        shutil.rmtree(self.partial, ignore_errors=True)
        if cfg.eval_goals > 0:
            report["eval"] = ws.evaluate_valid(HFPolicy(merged, self.tokenizer, lora=None, device=self.device), cfg)
            self.log(f"held-out eval: {json.dumps(report['eval'])}")
        report["total_seconds"] = self.state["seconds"] + time.perf_counter() - self.t_start
        files.write_report(self.target, report)
        return self.target


def _as_tuple(x: Any) -> Any:
    """``random.Random.setstate`` wants tuples; a checkpoint may hand back lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
