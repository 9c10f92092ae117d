"""The HERO training loop (and its baselines), readable top to bottom: config -> train -> update -> helpers.

One iteration of :func:`train`::

    episodes = collect(policy, envs, tasks x group_size)     # token-exact rollouts; a whole batch
    reflections = reflector.reflect(episodes)                # methods with a reflector: hindsight per turn
    notes = method.notes(episodes, reflections, ...)         # the only difference between the methods
    update(policy, optimizer, episodes, notes, config)       # teacher scores the student's tokens; one step
    log episodes + metrics; snapshot; checkpoint             # resumable; nested budgets from snapshots

The methods live in :mod:`hero_gym.agents.methods` (``METHODS``). Training cost is counted in
**environment turns**, the resource the HERO claim is about.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from hero_gym.records import Episode

from . import distributed as D
from . import losses as L
from .checkpoint import RunCounters, RunFiles, save_snapshot
from .methods import MethodSpec, NoteOptions, get_method
from .reflector import LLMReflector, Reflector, RuleReflector
from .rollout import TOOL_PROMPTS
from .scoring import TokenLayout, build_layout, student_hidden, teacher_logits_prefix_cache
from .teachers import NOTE_STYLES, SuccessBuffer, TeacherKind, TeacherWeights

__all__ = ["TrainConfig", "TrainResult", "EvalResult", "UpdateStats", "train", "evaluate", "update",
           "teacher_contexts_for", "episode_finished"]

LossKind = Literal["forward_kl", "reverse_kl", "jsd", "sampled"]


@dataclass
class TrainConfig:
    """Everything a training run needs besides the policy. Distillation defaults follow SDPO."""

    # --- what is trained, on what
    method: str = "hero"
    """A key of :data:`hero_gym.agents.methods.METHODS`: grpo, envfb_sd, full_demo, hero_rules, hero,
    hero_shuffled."""
    env_id: str = "hero_gym/Lookup-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``hero_gym.make``."""
    task_indices: list[int] | None = None
    """Training tasks, cycled in order (``options={"task_index": i}``); ``None`` = per-group reset seeds."""
    seed: int = 0
    """Seeds the task order, sampling, torch, and the fresh LoRA initialisation (see ``reset_lora``)."""
    reset_lora: bool = True
    """Re-initialise the policy's LoRA adapter from ``seed`` when a run starts fresh, so a cell gives the
    same result alone or inside a sweep (PEFT draws its init from the global RNG at wrap time)."""

    # --- budget and rollouts
    turn_budget: int = 200
    """Training budget in environment turns, counted in **whole batches**: a new batch starts while fewer
    than ``turn_budget`` turns are spent and always runs to the end, so no training episode is cut by the
    budget (the last batch may overshoot; every snapshot records the turns actually spent)."""
    max_turns: int | None = None
    """Per-episode turn cap (``None`` = the env's). Episodes it cuts (truncated), like those cut by the
    context window or an env error, are *unfinished*: they get no GRPO advantage (not counted as
    failures) and reflectors do not call them failed; their per-turn notes still train."""
    tasks_per_update: int = 2
    """Distinct tasks per batch."""
    group_size: int = 4
    """Rollouts per task (GRPO groups; siblings for the full-demo teacher)."""
    max_new_tokens: int = 128
    temperature: float = 1.0
    """Sampling temperature of training rollouts (1 keeps the recorded log-probs equal to the model's)."""
    tool_prompt: Literal["full", "compact"] = "full"
    """Tool description in the system message: every JSON schema, or one line per tool (small models)."""
    env_pool: Literal["inprocess", "subprocess", "ray"] = "inprocess"
    """Where the rollout envs run (:mod:`hero_gym.pool`): this process, one subprocess per env, or one Ray
    actor per env (slow, I/O-bound envs then step side by side; a crashed worker is restarted)."""
    ray_address: str | None = None
    """``ray.init(address=...)`` for ``env_pool="ray"`` (``None``: a local Ray instance; ``"auto"``: this
    node's cluster)."""

    # --- optimiser
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_updates: int | None = None
    """Optional cap on iterations (besides the budget)."""

    # --- self-distillation (every method but grpo)
    loss: LossKind = "jsd"
    """Per-token divergence: generalised ``"jsd"`` (``jsd_alpha``), ``"forward_kl"`` KL(T||S),
    ``"reverse_kl"`` KL(S||T), or ``"sampled"`` (sampled-token estimator, PPO-clipped)."""
    jsd_alpha: float = 0.5
    topk: int | None = 100
    """Compare the distributions on ``topk`` tokens plus one tail bucket (``None`` = full vocabulary)."""
    topk_source: Literal["student", "teacher"] = "student"
    """Whose top-k tokens are compared (SDPO: the student's)."""
    is_clip: float | None = 2.0
    """Truncation of the per-token importance weight ``pi_now / pi_sampled`` (``None`` = no weighting)."""
    teacher: TeacherKind = "ema"
    """Teacher weights: ``"ema"`` of the trainable weights, ``"live"`` (current, stop-grad), ``"base"``."""
    ema_rate: float = 0.05
    """EMA teacher update ``theta_T <- (1 - rate) theta_T + rate theta``."""
    min_confidence: Literal["high", "medium", "low"] = "medium"
    """HERO diagnoses below this confidence are masked (uninformative notes stay out of the loss)."""
    reflector: Literal["rules", "model", "llm"] | None = None
    """Override the method's reflector (``"llm"`` = ``"model"``: the policy reflects on its episodes)."""
    reflector_max_new_tokens: int | None = None
    """Cap on the model reflector's generation (``None``: none); its budget is
    ``reflector_tokens_per_turn`` per turn of the episode (+32), see ``reflector.reflection_budget``."""
    reflector_tokens_per_turn: int = 80
    """The model reflector's new tokens per turn reviewed (its JSON has one entry per turn)."""
    note_style: str = "no_echo_target"
    """HERO note style (:data:`hero_gym.agents.teachers.NOTE_STYLES`): ``no_echo_target`` (default),
    ``no_echo``, ``target_only``, ``echo_target`` or ``legacy`` (the notes and the model reflector's prompt
    before issue 23)."""
    reflector_retries: int = 2
    """Bounded retries of the model reflector when too few turns parsed."""
    envfb_max_chars: int = 600
    """Env-feedback notes keep this many characters of the next observation."""
    demo_max_chars: int = 2000
    """Full-demo notes keep this many characters of the demonstration."""

    # --- GRPO (method grpo, or blended into a distillation method)
    grpo_weight: float = 0.0
    """Blend ``(1-w) L_distill + w L_grpo`` for distillation methods; ignored for ``grpo``."""
    clip_eps: float = 0.2
    """PPO clip range (GRPO surrogate and the sampled-token loss)."""
    kl_coef: float = 0.0
    """GRPO KL-to-reference (adapter off) coefficient; 0 skips the reference pass."""

    # --- memory and speed
    micro_batch_episodes: int = 1
    """Episodes per forward/backward (gradients accumulate over the batch; the loss is normalised over the
    whole batch either way). 1 = one unpadded sequence, the causal kernel, no padding mask."""
    loss_chunk_tokens: int = 256
    """Action tokens per chunk of the vocabulary-sized loss (the ``[N, V]`` table never exists whole)."""
    gradient_checkpointing: bool = True
    """Recompute decoder activations in the backward pass (a 135M model's update then fits in ~4 GB)."""
    sharding: Literal["none", "fsdp"] = "none"
    """``"fsdp"``: under torch.distributed, shard the weights, the optimiser state and the EMA teacher over
    the ranks with PyTorch FSDP2 (:func:`hero_gym.agents.distributed.fsdp_shard`); compute runs on gathered
    weights, so the model's weights (and gradients) must fit one device, its fp32 master weights and
    optimiser state need not. Needs an initialised process group and no ``rollout_policy``. ``"none"``:
    every rank holds everything (data-parallel)."""
    mixed_precision: Literal["none", "bf16"] = "none"
    """With ``sharding="fsdp"``: ``"bf16"`` gathers the weights and computes in bfloat16 with fp32 master
    weights and gradient reduction (GPUs); ``"none"`` keeps the model's dtype."""

    # --- files
    checkpoint_dir: str | None = None
    """Checkpoints, JSONL logs and weight snapshots (``None`` = none of them, no resume)."""
    resume: bool = True
    """Continue from ``checkpoint_dir`` if it holds a checkpoint (else start fresh there)."""
    progress: bool | None = None
    """A progress bar over the turn budget; ``None`` = only when stderr is a terminal."""

    def __post_init__(self) -> None:
        get_method(self.method)
        if self.loss not in ("forward_kl", "reverse_kl", "jsd", "sampled"):
            raise ValueError(f"unknown loss {self.loss!r}")
        if not 0.0 <= self.grpo_weight <= 1.0:
            raise ValueError("grpo_weight must be in [0, 1]")
        if self.group_size < 1 or self.tasks_per_update < 1:
            raise ValueError("group_size and tasks_per_update must be >= 1")
        if self.reflector not in (None, "rules", "model", "llm"):
            raise ValueError(f"unknown reflector {self.reflector!r}")
        if self.note_style not in NOTE_STYLES:
            raise ValueError(f"note_style must be one of {list(NOTE_STYLES)}, got {self.note_style!r}")
        if self.env_pool not in ("inprocess", "subprocess", "ray"):
            raise ValueError(f"env_pool must be 'inprocess', 'subprocess' or 'ray', got {self.env_pool!r}")
        if self.sharding not in ("none", "fsdp"):
            raise ValueError(f"sharding must be 'none' or 'fsdp', got {self.sharding!r}")
        if self.mixed_precision not in ("none", "bf16"):
            raise ValueError(f"mixed_precision must be 'none' or 'bf16', got {self.mixed_precision!r}")
        if self.mixed_precision != "none" and self.sharding != "fsdp":
            raise ValueError("mixed_precision applies to sharding='fsdp' only")
        if self.topk_source not in ("student", "teacher"):
            raise ValueError(f"topk_source must be 'student' or 'teacher', got {self.topk_source!r}")

    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)


@dataclass
class UpdateStats:
    """What one :func:`update` did (also part of a ``metrics.jsonl`` row).

    ``stepped``: an optimizer step was taken (not when no token carried a training signal);
    ``tokens_trained``: action tokens that entered a loss with a non-zero signal; ``distill_tokens``:
    action tokens of turns with a teacher note; ``grpo_tokens``: action tokens of finished episodes.
    """

    stepped: bool
    tokens_trained: int
    loss: float
    distill_loss: float | None
    grpo_loss: float | None
    distill_tokens: int
    grpo_tokens: int
    action_tokens: int
    masked_turns: int
    scored_turns: int
    grad_norm: float
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Returned by :func:`train`."""

    iterations: int
    optimizer_steps: int
    tokens_trained: int
    turns_used: int
    episodes: int
    train_success_rate: float
    metrics: list[dict[str, Any]]
    checkpoint_dir: str | None
    resumed_from_iteration: int = 0

    @property
    def updates(self) -> int:
        """Iterations (collect + update rounds); see ``optimizer_steps`` for steps actually taken."""
        return self.iterations


@dataclass
class EvalResult:
    """Returned by :func:`evaluate`."""

    success_rate: float
    mean_reward: float
    mean_turns: float
    episodes: list[Episode] = field(repr=False)

    @property
    def valid_action_rate(self) -> float:
        """Share of turns whose action parsed and validated (no ``action_error``)."""
        turns = [t for ep in self.episodes for t in ep.turns]
        return sum(t.action_error is None for t in turns) / len(turns) if turns else 0.0

    def summary(self) -> dict[str, float]:
        return {"success_rate": self.success_rate, "mean_reward": self.mean_reward,
                "mean_turns": self.mean_turns, "valid_action_rate": self.valid_action_rate,
                "n_episodes": float(len(self.episodes))}

    def __repr__(self) -> str:
        return (f"EvalResult(success_rate={self.success_rate:.3f}, mean_reward={self.mean_reward:.3f}, "
                f"mean_turns={self.mean_turns:.2f}, valid_action_rate={self.valid_action_rate:.3f}, "
                f"n_episodes={len(self.episodes)})")


# ======================================================================================
# train
# ======================================================================================

def train(
    policy: Any,
    config: TrainConfig,
    *,
    reflector: Reflector | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    rollout_policy: Any | None = None,
) -> TrainResult:
    """Train ``policy`` (an :class:`~hero_gym.agents.policy.HFPolicy`) with ``config.method`` until
    ``config.turn_budget`` environment turns are spent (whole batches) or ``config.max_updates`` iterations.

    ``reflector`` overrides the method's reflector. ``rollout_policy`` (e.g. a
    :class:`~hero_gym.agents.vllm_policy.VLLMPolicy` on the same base model) generates the rollouts;
    ``policy`` is the one trained, and its adapter is handed to ``rollout_policy.set_lora`` at the start
    (so a resumed run samples from the resumed weights) and after every update.

    With ``config.checkpoint_dir``: episodes and metrics are appended to JSONL logs, the resume checkpoint
    is rewritten atomically after every iteration, and the trainable weights are snapshotted to
    ``snapshots/turns_<T>/`` before the first update and after every optimizer step
    (:mod:`hero_gym.agents.checkpoint`).
    """
    spec = config.spec
    model = policy.model
    if config.sharding == "fsdp":   # refused before anything is written
        D.require_process_group("sharding='fsdp'")
        if rollout_policy is not None:
            raise ValueError("sharding='fsdp' cannot hand its adapter to a rollout_policy")
    _seed_everything(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters")
    files = RunFiles(config.checkpoint_dir) if config.checkpoint_dir else None
    resuming = files is not None and config.resume and files.has_checkpoint()
    main = D.is_main()   # under torch.distributed only rank 0 writes files; every rank reads a checkpoint
    if config.reset_lora and not resuming:
        _reset_lora(model, config.seed)
    optimizer = optimizer or torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    teacher = TeacherWeights(model, config.teacher, config.ema_rate)
    buffer = SuccessBuffer()
    reflector = reflector or _make_reflector(spec, policy, config)
    counters, metrics, resumed_from = RunCounters(), [], 0
    if resuming:
        counters, metrics = files.restore(model=model, optimizer=optimizer, teacher=teacher, buffer=buffer)
        if main:
            files.write_config(config)
        resumed_from = counters.iterations
    elif files is not None and main:
        files.start_fresh(config)
        save_snapshot(policy, files.dir, counters)        # budget 0: the starting weights
    D.broadcast_parameters(model)                         # every rank starts from rank 0's weights
    if config.sharding == "fsdp":                         # after restoring: full state in, shards out
        D.fsdp_shard(model, optimizer=optimizer, teacher=teacher,
                     mixed_precision=None if config.mixed_precision == "none" else config.mixed_precision)
    if rollout_policy is not None:
        _hand_over_adapter(policy, rollout_policy, files)

    envs = _make_envs(config)
    bar = _progress_bar(config, counters.turns) if main else None
    try:
        while counters.turns < config.turn_budget and (config.max_updates is None
                                                       or counters.iterations < config.max_updates):
            t0 = time.perf_counter()
            with D.gathered(model):   # FSDP: whole weights for generation (no-op otherwise)
                episodes = _collect_batch(rollout_policy or policy, envs, config, counters.iterations)
                if not D.global_counts([len(episodes)])[0]:
                    break
                t_collect = time.perf_counter() - t0
                reflections = reflector.reflect(episodes) if reflector is not None else None
            notes = spec.notes(episodes, reflections, buffer, _note_options(config, counters.iterations))
            if D.world_size() > 1:   # this rank's share above; the whole batch (every rank's) below
                if reflections is not None:
                    for ep, r in zip(episodes, reflections):
                        ep.metadata["reflection"] = r.to_json()
                local, episodes, reflections = episodes, D.gather(episodes), None
            else:
                local = episodes
            buffer.add(episodes)
            t_notes = time.perf_counter() - t0 - t_collect
            stats = update(policy, optimizer, local, notes, config, teacher=teacher)
            counters.iterations += 1
            counters.optimizer_steps += int(stats.stepped)
            counters.tokens_trained += stats.tokens_trained
            counters.turns += sum(len(ep.turns) for ep in episodes)
            counters.episodes += len(episodes)
            counters.successes += sum(ep.success for ep in episodes)
            if rollout_policy is not None and stats.stepped:
                _hand_over_adapter(policy, rollout_policy, files)
            row = _metrics_row(counters, episodes, stats,
                               {"collect": t_collect, "notes": t_notes, "iteration": time.perf_counter() - t0})
            metrics.append(row)
            with D.full_state(model, optimizer, teacher) if files is not None else contextlib.nullcontext():
                if files is not None and main:   # FSDP: every rank gathered the full state above
                    for i, ep in enumerate(episodes):
                        ep.metadata["train_iteration"] = counters.iterations
                        if reflections is not None:
                            ep.metadata["reflection"] = reflections[i].to_json()
                    files.log(episodes, row)
                    if stats.stepped:
                        save_snapshot(policy, files.dir, counters)
                    files.save(model=model, optimizer=optimizer, teacher=teacher, buffer=buffer, counters=counters)
            if bar is not None:
                bar.update(sum(len(ep.turns) for ep in episodes))
                bar.set_postfix(loss=f"{stats.loss:.4f}", succ=f"{row['success_rate']:.2f}")
    finally:
        for e in envs:
            e.close()
        if bar is not None:
            bar.close()
    return TrainResult(iterations=counters.iterations, optimizer_steps=counters.optimizer_steps,
                       tokens_trained=counters.tokens_trained, turns_used=counters.turns,
                       episodes=counters.episodes,
                       train_success_rate=counters.successes / counters.episodes if counters.episodes else 0.0,
                       metrics=metrics, checkpoint_dir=str(files.dir) if files else None,
                       resumed_from_iteration=resumed_from)


# ======================================================================================
# update
# ======================================================================================

def update(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[Episode],
    notes: Sequence[Sequence[str | None]] | None,
    config: TrainConfig,
    *,
    teacher: TeacherWeights | None = None,
) -> UpdateStats:
    """One optimiser step on a batch of episodes (none when no token carries a training signal).

    Distillation (every method but ``grpo``): for each sampled action token of a turn with a note, the
    divergence between the student's next-token distribution (in the context the model saw) and the
    teacher's (teacher weights, the context with the note inserted before the action), weighted by
    truncated importance ratios; mean over those tokens. GRPO (method ``grpo`` or ``grpo_weight > 0``):
    clipped surrogate with the episode's group-normalised advantage on every action token of *finished*
    episodes; mean over those tokens. Only sampled action tokens ever enter a loss.
    """
    model = policy.model
    teacher = teacher or TeacherWeights(model, config.teacher, config.ema_rate)
    layout = build_layout(episodes)
    plan = _plan_losses(policy, episodes, notes, layout, config)
    # whole-batch counts (summed over ranks under torch.distributed: agents/distributed.py)
    n_tokens, n_spans = (int(x) for x in D.global_counts([layout.num_tokens, len(layout.spans)]))
    counts = {"action_tokens": n_tokens, "distill_tokens": plan.distill_denom, "grpo_tokens": plan.grpo_denom,
              "scored_turns": plan.scored_turns, "masked_turns": n_spans - plan.scored_turns,
              "tokens_trained": plan.global_tokens_trained}
    if plan.global_tokens_trained == 0:
        return UpdateStats(stepped=False, loss=0.0, distill_loss=None, grpo_loss=None, grad_norm=0.0, **counts)
    t0 = time.perf_counter()
    seconds = {"teacher": 0.0, "student": 0.0}
    sums = {"distill": 0.0, "grpo": 0.0}
    pad = getattr(policy, "pad_token_id", 0) or 0
    optimizer.zero_grad(set_to_none=True)
    # FSDP: weights gathered over the loop, gradients reduce-scattered after it (no-op otherwise)
    for cidx, tok in D.fsdp_micro_batches(model, teacher, _micro_batches(layout, config.micro_batch_episodes)):
        t1 = time.perf_counter()
        t_logits = None
        if plan.n_distill:
            with torch.no_grad(), teacher.active():
                t_logits, _ = teacher_logits_prefix_cache(model, episodes, plan.teacher_contexts, layout,
                                                          chain_indices=cidx, pad_id=pad, as_hidden=True)
        ref_lp = (_reference_logprobs(model, episodes, layout, cidx, pad, layout.action_ids[tok], config)
                  if plan.n_grpo and config.kl_coef > 0 else None)
        t2 = time.perf_counter()
        seconds["teacher"] += t2 - t1
        batch = _TokenBatch(layout.action_ids[tok], layout.behaviour_logprobs[tok], plan.distill_mask[tok],
                            plan.grpo_mask[tok], plan.advantages[tok], t_logits, ref_lp)
        with _training_mode(model, config.gradient_checkpointing):
            hidden, head = student_hidden(model, episodes, layout, chain_indices=cidx, pad_id=pad)
            _chunked_backward(hidden, head, lambda sl, z: _chunk_loss(sl, z, batch, plan, config, sums),
                              config.loss_chunk_tokens)
        seconds["student"] += time.perf_counter() - t2
    params = [p for p in model.parameters() if p.requires_grad]
    D.all_reduce_gradients(params)
    sums["distill"], sums["grpo"] = D.global_counts([sums["distill"], sums["grpo"]])
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    teacher.update()
    return UpdateStats(stepped=True, loss=plan.w_distill * sums["distill"] + plan.w_grpo * sums["grpo"],
                       distill_loss=sums["distill"] if plan.distill_denom else None,
                       grpo_loss=sums["grpo"] if plan.grpo_denom else None, grad_norm=grad_norm,
                       seconds={**seconds, "update": time.perf_counter() - t0}, **counts)


# ======================================================================================
# helpers of update
# ======================================================================================

def episode_finished(ep: Episode) -> bool:
    """Whether the env itself ended the episode (success or failure), as opposed to a cut: the
    per-episode turn cap (truncation), the context window, an env error or the budget."""
    return ep.success or (ep.terminated and not ep.metadata.get("cut_short", False))


@dataclass
class _LossPlan:
    """Which action tokens enter which loss, with what weight (all tensors ``[N]`` over the layout)."""

    teacher_contexts: list[list[list[int] | None]] | None
    distill_mask: torch.Tensor
    grpo_mask: torch.Tensor
    advantages: torch.Tensor
    w_distill: float
    w_grpo: float
    scored_turns: int
    distill_denom: int = 0
    """Distillation tokens of the whole batch (all ranks): the distillation loss is a mean over them."""
    grpo_denom: int = 0
    """GRPO tokens of the whole batch (all ranks)."""
    global_tokens_trained: int = 0

    @property
    def n_distill(self) -> int:
        return int(self.distill_mask.sum())

    @property
    def n_grpo(self) -> int:
        return int(self.grpo_mask.sum())

    @property
    def tokens_trained(self) -> int:
        return int((self.distill_mask | (self.grpo_mask & (self.advantages != 0))).sum())


def _plan_losses(policy: Any, episodes: Sequence[Episode], notes: Sequence[Sequence[str | None]] | None,
                 layout: TokenLayout, config: TrainConfig) -> _LossPlan:
    spec = config.spec
    n = layout.num_tokens
    distill_mask = torch.zeros(n, dtype=torch.bool)
    tctx, scored = None, 0
    if spec.distills and notes is not None:
        tctx = teacher_contexts_for(_renderer_for(policy), episodes, notes)
        keys = {(s.episode, s.turn) for s in layout.spans if tctx[s.episode][s.turn] is not None}
        distill_mask, scored = layout.token_mask(keys), len(keys)
    w_grpo = 1.0 if spec.uses_grpo else config.grpo_weight
    grpo_mask = torch.zeros(n, dtype=torch.bool)
    advantages = torch.zeros(n)
    if w_grpo > 0:
        finished = [i for i, ep in enumerate(episodes) if episode_finished(ep)]
        if finished:
            adv = L.group_advantages([episodes[i].total_reward for i in finished],
                                     [episodes[i].task_id or episodes[i].episode_id for i in finished])
            per_episode = torch.zeros(len(episodes))
            per_episode[finished] = adv
            is_finished = torch.zeros(len(episodes), dtype=torch.bool)
            is_finished[finished] = True
            advantages = per_episode[layout.episode_of_token]
            grpo_mask = is_finished[layout.episode_of_token]
    w_distill = 1.0 - w_grpo if spec.distills else 0.0
    if not D.global_any(distill_mask):
        w_distill = 0.0
    if w_grpo == 0 or not D.global_any(grpo_mask & (advantages != 0)):
        grpo_mask = torch.zeros(n, dtype=torch.bool)
    plan = _LossPlan(tctx, distill_mask & (w_distill > 0), grpo_mask, advantages, w_distill, w_grpo, scored)
    totals = D.global_counts([plan.n_distill, plan.n_grpo, plan.tokens_trained, scored])
    plan.distill_denom, plan.grpo_denom, plan.global_tokens_trained, plan.scored_turns = (int(x) for x in totals)
    return plan


@dataclass
class _TokenBatch:
    """The action tokens of one micro-batch and what their losses need."""

    ids: torch.Tensor
    behaviour_logprobs: torch.Tensor
    distill_mask: torch.Tensor
    grpo_mask: torch.Tensor
    advantages: torch.Tensor
    teacher_logits: Any
    ref_logprobs: torch.Tensor | None


def _chunk_loss(sl: slice, logits: torch.Tensor, b: _TokenBatch, plan: _LossPlan, config: TrainConfig,
                sums: dict[str, float]) -> torch.Tensor | None:
    """The loss contribution of tokens ``sl`` of a micro-batch, given their student logits."""
    dev = logits.device
    lp_all = F.log_softmax(logits.float(), -1)
    ids = b.ids[sl].to(dev)
    lp = lp_all.gather(-1, ids[:, None]).squeeze(-1)
    beh = b.behaviour_logprobs[sl].to(dev)
    b_lp = torch.where(torch.isnan(beh), lp.detach(), beh)
    total = None
    m = b.distill_mask[sl].to(dev)
    if m.any():
        t_all = F.log_softmax(b.teacher_logits[sl].float(), -1)
        if config.loss == "sampled":
            per = L.sampled_token_loss(lp, t_all.gather(-1, ids[:, None]).squeeze(-1), b_lp, config.clip_eps)
        else:
            s_, t_ = (L.topk_with_tail(lp_all, t_all, config.topk, config.topk_source)
                      if config.topk is not None else (lp_all, t_all))
            per = L.divergence(s_, t_, config.loss, config.jsd_alpha) * L.importance_weights(lp, b_lp, config.is_clip)
        d = (per * m).sum() / plan.distill_denom
        sums["distill"] += float(d.detach())
        total = plan.w_distill * d
    g_m = b.grpo_mask[sl].to(dev)
    if g_m.any():
        ref = None if b.ref_logprobs is None else b.ref_logprobs[sl]
        per = L.grpo_token_loss(lp, b_lp, b.advantages[sl].to(dev), clip_eps=config.clip_eps, ref_logp=ref,
                                kl_coef=config.kl_coef)
        g = (per * g_m).sum() / plan.grpo_denom
        sums["grpo"] += float(g.detach())
        total = plan.w_grpo * g if total is None else total + plan.w_grpo * g
    return total


def _chunked_backward(hidden: torch.Tensor, head: Any, loss_fn: Any, chunk: int) -> None:
    """Backpropagate ``sum_chunks loss_fn(slice, head(hidden[slice]))`` chunk by chunk: the vocabulary-sized
    logits and their softmaxes exist for one chunk at a time; the gradient w.r.t. the hidden states is
    accumulated and sent into the model in one backward call."""
    leaf = hidden.detach().requires_grad_(True)
    for s in range(0, leaf.shape[0], max(1, chunk)):
        sl = slice(s, min(leaf.shape[0], s + max(1, chunk)))
        val = loss_fn(sl, head(leaf[sl]))
        if val is not None:
            val.backward()
    if leaf.grad is not None:
        hidden.backward(leaf.grad)


def _micro_batches(layout: TokenLayout, episodes_per_batch: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``(chain indices, flat token indices)`` per micro-batch of ``episodes_per_batch`` episodes."""
    by_episode: dict[int, list[int]] = {}
    for ci, ch in enumerate(layout.chains):
        by_episode.setdefault(ch.episode, []).append(ci)
    order = sorted(by_episode)
    step = max(1, episodes_per_batch)
    for b in range(0, len(order), step):
        cidx = [ci for e in order[b:b + step] for ci in by_episode[e]]
        spans = [layout.span(layout.chains[ci].episode, t) for ci in cidx for t in layout.chains[ci].turns]
        yield cidx, torch.cat([torch.arange(s.start, s.start + s.length) for s in spans])


def _reference_logprobs(model: Any, episodes: Sequence[Episode], layout: TokenLayout, cidx: list[int], pad: int,
                        ids: torch.Tensor, config: TrainConfig) -> torch.Tensor | None:
    """Log-probs of the action tokens under the reference (adapter off), for GRPO's KL term."""
    if not hasattr(model, "disable_adapter"):
        return None
    out = []
    with torch.no_grad(), model.disable_adapter():
        hidden, head = student_hidden(model, episodes, layout, chain_indices=cidx, pad_id=pad)
        for s in range(0, hidden.shape[0], config.loss_chunk_tokens):
            sl = slice(s, s + config.loss_chunk_tokens)
            lp = F.log_softmax(head(hidden[sl]).float(), -1)
            out.append(lp.gather(-1, ids[sl].to(lp.device)[:, None]).squeeze(-1))
    return torch.cat(out)


@contextlib.contextmanager
def _training_mode(model: Any, checkpointing: bool) -> Iterator[None]:
    """Train mode (with activation checkpointing when asked and supported) for the student pass only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enabled = False
    if checkpointing and getattr(base, "supports_gradient_checkpointing", False):
        kw = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):     # transformers >= 5
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        enabled = True
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        if enabled:
            (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()


def _renderer_for(policy: Any) -> Any:
    r = getattr(policy, "_hero_renderer", None)
    if r is None:
        from hero_gym.chat import ChatRenderer

        r = ChatRenderer(policy.tokenizer, check=False)
        policy._hero_renderer = r
    return r


def teacher_contexts_for(renderer: Any, episodes: Sequence[Episode],
                         notes: Sequence[Sequence[str | None]]) -> list[list[list[int] | None]]:
    """Teacher context ids per turn: ``renderer.note_ids(context, note)`` (``None`` where no note or no ids)."""
    out: list[list[list[int] | None]] = []
    for ep, ns in zip(episodes, notes):
        row: list[list[int] | None] = []
        for turn, note in zip(ep.turns, ns):
            if note is None or not turn.context_token_ids or not turn.action_token_ids:
                row.append(None)
            else:
                try:
                    row.append(renderer.note_ids(turn.context_token_ids, note))
                except ValueError:   # context does not end with the generation prompt: mask the turn
                    row.append(None)
        out.append(row)
    return out


# ======================================================================================
# helpers of train
# ======================================================================================

def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _reset_lora(model: Any, seed: int) -> None:
    """Re-draw every LoRA adapter's initial weights from ``seed`` (global RNG untouched)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for name in list(module.lora_A.keys()):
                    module.reset_lora_parameters(name, True)


def _make_reflector(spec: MethodSpec, policy: Any, config: TrainConfig) -> Reflector | None:
    if spec.reflector is None:
        return None
    kind = {"llm": "model"}.get(config.reflector or "", config.reflector) or spec.reflector
    if kind == "rules":
        return RuleReflector()
    return LLMReflector(policy, max_new_tokens=config.reflector_max_new_tokens, max_retries=config.reflector_retries,
                        tokens_per_turn=config.reflector_tokens_per_turn,
                        style="legacy" if config.note_style == "legacy" else "current")


def _note_options(config: TrainConfig, iteration: int) -> NoteOptions:
    return NoteOptions(envfb_max_chars=config.envfb_max_chars, demo_max_chars=config.demo_max_chars,
                       min_confidence=config.min_confidence, seed=config.seed * 1_000_003 + iteration,
                       note_style=config.note_style)


def _make_envs(config: TrainConfig) -> list[Any]:
    import hero_gym

    kw = dict(config.env_kwargs)
    if config.max_turns is not None:
        kw["max_turns"] = config.max_turns
    n = len(D.shard(range(config.tasks_per_update))) * config.group_size   # this rank's share
    if config.env_pool != "inprocess":
        from hero_gym.pool import make_pool

        extra = {"address": config.ray_address} if config.env_pool == "ray" else {}
        return make_pool(config.env_pool, config.env_id, max(1, n), kw, **extra).envs  # closing them closes it
    return [hero_gym.make(config.env_id, **kw) for _ in range(max(1, n))]


def _tasks_for(iteration: int, config: TrainConfig) -> list[Any]:
    """Deterministic task list of an iteration (so a resumed run draws the same tasks)."""
    from .rollout import Task

    tasks = []
    for j in range(config.tasks_per_update):
        k = iteration * config.tasks_per_update + j
        seed = config.seed * 1_000_003 + k
        if config.task_indices:
            tasks.append(Task(seed=seed, options={"task_index": config.task_indices[k % len(config.task_indices)]}))
        else:
            tasks.append(Task(seed=seed))
    return tasks


def _collect_batch(policy: Any, envs: list[Any], config: TrainConfig, iteration: int) -> list[Episode]:
    """One whole batch of training episodes (never cut by the run's budget)."""
    from .policy import SamplingConfig
    from .rollout import collect

    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              seed=config.seed * 7919 + iteration)
    model_cfg = getattr(getattr(policy, "model", None), "config", None)
    return collect(policy, envs, tasks=D.shard(_tasks_for(iteration, config)), group_size=config.group_size,
                   sampling=sampling, tool_prompt=TOOL_PROMPTS[config.tool_prompt],
                   max_context_tokens=getattr(model_cfg, "max_position_embeddings", None))


def _metrics_row(c: RunCounters, episodes: Sequence[Episode], stats: UpdateStats,
                 seconds: dict[str, float]) -> dict[str, Any]:
    return {"iteration": c.iterations, "turns_used": c.turns, "episodes": c.episodes,
            "optimizer_steps": c.optimizer_steps, "tokens_trained_total": c.tokens_trained,
            "success_rate": sum(ep.success for ep in episodes) / len(episodes),
            "mean_reward": float(np.mean([ep.total_reward for ep in episodes])),
            "mean_turns": float(np.mean([len(ep.turns) for ep in episodes])),
            "unfinished_episodes": sum(not episode_finished(ep) for ep in episodes),
            **{k: v for k, v in asdict(stats).items() if k != "seconds"},
            "seconds": {**stats.seconds, **seconds}}


def _hand_over_adapter(policy: Any, rollout_policy: Any, files: RunFiles | None) -> None:
    """Save the trained adapter and point the rollout backend (vLLM) at it."""
    import tempfile

    root = files.dir if files is not None else Path(tempfile.mkdtemp(prefix="hero_gym_adapter_"))
    policy.save(root / "rollout_adapter")
    rollout_policy.set_lora(root / "rollout_adapter")


def _progress_bar(config: TrainConfig, spent: int) -> Any:
    if not (sys.stderr.isatty() if config.progress is None else config.progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.turn_budget, initial=spent, desc=f"train[{config.method}]", unit="turn")


# ======================================================================================
# evaluate
# ======================================================================================

def evaluate(
    policy: Any,
    env_id: str,
    env_kwargs: dict[str, Any] | None = None,
    n_episodes: int | None = None,
    *,
    task_indices: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    temperature: float = 0.0,
    max_new_tokens: int = 128,
    num_envs: int = 8,
    max_turns: int | None = None,
    max_context_tokens: int | None = None,
    progress: bool = False,
    tool_prompt: Literal["full", "compact"] = "full",
) -> EvalResult:
    """Roll the policy out (greedy by default) and report success rate, mean reward and mean turns.

    Tasks: ``task_indices`` (``options={"task_index": i}``, with ``seeds[i]`` or ``i`` as reset seed),
    else ``seeds``, else ``range(n_episodes)`` as reset seeds. ``n_episodes`` with ``task_indices``
    or ``seeds`` truncates the list. ``max_turns`` overrides the env's per-episode turn cap.
    No training budget is spent. ``tool_prompt`` as in :class:`TrainConfig`.
    """
    from .policy import SamplingConfig
    from .rollout import Task, collect

    if task_indices is not None:
        sd = list(seeds) if seeds is not None else list(range(len(task_indices)))
        tasks = [Task(seed=sd[i % len(sd)], options={"task_index": int(t)}) for i, t in enumerate(task_indices)]
    elif seeds is not None:
        tasks = [Task(seed=int(s)) for s in seeds]
    elif n_episodes is not None:
        tasks = [Task(seed=i) for i in range(n_episodes)]
    else:
        raise ValueError("evaluate: give n_episodes, task_indices or seeds")
    if n_episodes is not None:
        tasks = tasks[:n_episodes]
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=12345)
    if max_context_tokens is None:
        model_cfg = getattr(getattr(policy, "model", None), "config", None)
        max_context_tokens = getattr(model_cfg, "max_position_embeddings", None)
    env_kwargs = dict(env_kwargs or {})
    if max_turns is not None:
        env_kwargs["max_turns"] = max_turns
    eps = collect(policy, env_id, tasks=tasks, sampling=sampling, env_kwargs=env_kwargs, num_envs=num_envs,
                  max_context_tokens=max_context_tokens, progress=progress, tool_prompt=TOOL_PROMPTS[tool_prompt])
    n = max(1, len(eps))
    return EvalResult(success_rate=sum(e.success for e in eps) / n,
                      mean_reward=float(sum(e.total_reward for e in eps) / n),
                      mean_turns=float(sum(len(e.turns) for e in eps) / n), episodes=eps)
