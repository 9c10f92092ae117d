"""The HERO training loop (and its baselines), readable top to bottom: config -> train -> helpers.

One iteration of :func:`train`::

    episodes = collect_batch(...)                    # token-exact rollouts of tasks x group_size: a whole batch
    reflections = reflect(...)                       # methods with a reflector: hindsight per turn
    notes = make_notes(...)                          # the only difference between the methods
    batch = whole_batch(...)                         # under torch.distributed: every rank's episodes
    stats = update(policy, optimizer, notes, ...)    # teacher scoring -> loss -> one optimizer step
    run.record(batch, stats, ...)                    # counters, logs, snapshot, checkpoint

:func:`~hero_gym.agents.update.update` does the step (its loss is
:func:`~hero_gym.agents.update.distillation_loss` and GRPO's surrogate). The methods live in
:mod:`hero_gym.agents.methods` (``METHODS``). Training cost is counted in **environment turns**, the
resource the HERO claim is about.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hero_gym.records import Episode

from . import distributed as D
from .checkpoint import RunCounters, RunFiles, list_snapshots, save_snapshot
from .future_guard import drop_future_copies
from .methods import ExpertDemos, MethodSpec, NoteOptions, Notes, get_method
from .oracle import oracle_target, recording_oracle
from .reflector import LLMReflector, Reflection, Reflector, RuleReflector
from .rollout import TOOL_PROMPTS, policy_context_window
from .teachers import NOTE_STYLES, SuccessBuffer, TeacherKind, TeacherWeights
from .update import UpdateStats, episode_finished, teacher_contexts_for, update

__all__ = ["TrainConfig", "TrainResult", "EvalResult", "UpdateStats", "train", "evaluate", "update", "make_reflector",
           "note_options", "teacher_contexts_for", "episode_finished"]

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
    """Per-episode turn cap (``None`` = the env's). An episode it truncates keeps its env reward and
    enters GRPO (:func:`episode_finished`); only episodes cut by the context window or an env error get
    no GRPO advantage. Every method's per-turn notes train on all of them."""
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
    the earlier notes)."""
    reflector_retries: int = 1
    """Bounded retries of the model reflector when too few turns parsed (each asks only for the missing
    turns; one retry keeps a first SmolLM2 run on a CPU to minutes, see ``benchmarks/reflector_speed.py``)."""
    envfb_max_chars: int = 600
    """Env-feedback notes keep this many characters of the next observation."""
    demo_max_chars: int = 2000
    """Full-demo notes keep this many characters of the demonstration (Tau-bench's need more: the bench
    raises it there)."""
    demo_fallback: bool = True
    """Full-demo: when no episode of a task succeeded (in the batch or before), show the env expert's
    demonstration of that same training task (:class:`~hero_gym.agents.methods.ExpertDemos`; envs without
    an expert have no fallback). ``demo_notes`` / ``demo_from_expert`` in the metrics count how often."""

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
    snapshot_budgets: list[int] | None = None
    """Write weight snapshots only where these budgets (in turns) read them: at the start and at the end of
    the iteration that carries the run to or past each budget (the model at budget ``B`` is the first
    snapshot at or past ``B``). ``None``: after every iteration (disk: ~80 MB per bf16 7B LoRA snapshot)."""
    snapshot_dtype: Literal["keep", "bfloat16"] = "keep"
    """Dtype of the weights in snapshots: the training dtype, or bfloat16 (half the disk of fp32 LoRA
    weights; the resume checkpoint always keeps full precision)."""
    resume: bool = True
    """Continue from ``checkpoint_dir`` if it holds a checkpoint (else start fresh there)."""
    progress: bool | None = None
    """A progress bar over the turn budget; ``None`` = only when stderr is a terminal."""

    def __post_init__(self) -> None:
        if self.snapshot_dtype not in ("keep", "bfloat16"):
            raise ValueError(f"snapshot_dtype must be 'keep' or 'bfloat16', got {self.snapshot_dtype!r}")
        if self.snapshot_budgets is not None and any(int(b) < 0 for b in self.snapshot_budgets):
            raise ValueError("snapshot_budgets must be >= 0")
        get_method(self.method)
        if self.turn_budget < 0 or (self.max_updates is not None and self.max_updates < 0):
            raise ValueError(f"turn_budget and max_updates must be >= 0, got {self.turn_budget}, {self.max_updates}")
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
        if self.spec.oracle and (self.env_pool != "inprocess" or self.reflector not in (None, "rules")):
            raise ValueError(f"method {self.method!r} (privileged: oracle targets) runs in-process envs with the rule "
                             f"reflector only, got env_pool={self.env_pool!r}, reflector={self.reflector!r}")

    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)


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
    (so a resumed run samples from the resumed weights) and after every update. The model reflector
    generates through ``rollout_policy`` too, and a backend with ``released()`` (vLLM sleep mode) frees
    its GPU memory during each update.

    Trainable weights in bfloat16/float16 (full fine-tuning of a bf16 model) are refused: without fp32
    master weights, AdamW steps below the weights' resolution are lost. Load the model in float32, train
    a LoRA adapter (PEFT keeps adapter weights in fp32), or use ``sharding="fsdp"`` with
    ``mixed_precision="bf16"``.

    With ``config.checkpoint_dir``: episodes and metrics are appended to JSONL logs, the resume checkpoint
    is rewritten atomically after every iteration, and the trainable weights are snapshotted to
    ``snapshots/turns_<T>/`` before the first update and after every iteration (an iteration without an
    optimizer step points at the previous snapshot's weights; :mod:`hero_gym.agents.checkpoint`).
    """
    run = _Run.start(policy, config, reflector, optimizer, rollout_policy)
    try:
        while run.budget_left():
            t0 = time.perf_counter()
            with D.gathered(policy.model):   # FSDP: whole weights for generation (no-op otherwise)
                episodes = collect_batch(rollout_policy or policy, run.envs, config, run.counters.iterations)
                if not D.global_counts([len(episodes)])[0]:
                    break
                t_collect = time.perf_counter() - t0
                reflections, guard = reflect(run.reflector, episodes)
            notes, note_counts = make_notes(config.spec, episodes, reflections, run, guard)
            batch = whole_batch(episodes, reflections)
            run.buffer.add(batch.episodes)
            t_notes = time.perf_counter() - t0 - t_collect
            with getattr(rollout_policy, "released", contextlib.nullcontext)():   # vLLM asleep while training
                stats = update(policy, run.optimizer, batch.local, notes, config, teacher=run.teacher)
            run.record(batch, stats, note_counts,
                       {"collect": t_collect, "notes": t_notes, "iteration": time.perf_counter() - t0})
    finally:
        run.close()
    return run.result()


def reflect(reflector: Reflector | None, episodes: Sequence[Episode]) -> tuple[list[Reflection] | None, dict[str, int]]:
    """Hindsight diagnoses of every turn (``None`` for methods without a reflector). A model reflector's
    diagnoses and targets that copy a later turn are dropped (:mod:`~hero_gym.agents.future_guard`); the
    counts of what was dropped come second."""
    if reflector is None:
        return None, {"diagnoses": 0, "targets": 0}
    reflections = reflector.reflect(episodes)
    if isinstance(reflector, LLMReflector):   # the no-future-exposure rule, enforced
        return drop_future_copies(episodes, reflections)
    return reflections, {"diagnoses": 0, "targets": 0}


def make_notes(spec: MethodSpec, episodes: Sequence[Episode], reflections: Sequence[Reflection] | None,
               run: _Run, guard: dict[str, int]) -> tuple[Notes, dict[str, int]]:
    """The method's teacher note for every turn, and this batch's note counts for the metrics."""
    used_before = run.expert_demos.used if run.expert_demos is not None else 0
    notes = spec.notes(episodes, reflections, run.buffer, note_options(run.config, run.counters.iterations,
                                                                        run.expert_demos))
    counts = {"future_copy_diagnoses_dropped": guard["diagnoses"], "future_copy_targets_dropped": guard["targets"]}
    if spec.name == "full_demo":
        counts["demo_notes"] = sum(bool(row) and row[0] is not None for row in notes)
        counts["demo_from_expert"] = run.expert_demos.used - used_before if run.expert_demos is not None else 0
    return notes, counts


@dataclass
class Batch:
    """One iteration's episodes: ``local`` (this rank's, which it trains on) and ``episodes`` (every
    rank's, which it counts and logs); ``reflections`` of ``episodes`` when known on this rank."""

    local: list[Episode]
    episodes: list[Episode]
    reflections: list[Reflection] | None


def whole_batch(episodes: list[Episode], reflections: list[Reflection] | None) -> Batch:
    """This rank's share -> the whole batch. Under torch.distributed the episodes of every rank are gathered
    (each carries its reflection in ``metadata["reflection"]``); in one process this is the identity."""
    if D.world_size() == 1:
        return Batch(episodes, episodes, reflections)
    if reflections is not None:
        for ep, r in zip(episodes, reflections):
            ep.metadata["reflection"] = r.to_json()
    return Batch(episodes, D.gather(episodes), None)


@dataclass
class _Run:
    """The state of a training run and its bookkeeping: files (rank 0 only), counters, metrics, the
    progress bar, the rollout backend's adapter and the environments."""

    policy: Any
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    teacher: TeacherWeights
    buffer: SuccessBuffer
    reflector: Reflector | None
    expert_demos: ExpertDemos | None
    files: RunFiles | None
    main: bool
    rollout_policy: Any | None
    counters: RunCounters = field(default_factory=RunCounters)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    envs: list[Any] = field(default_factory=list)
    bar: Any = None

    @classmethod
    def start(cls, policy: Any, config: TrainConfig, reflector: Reflector | None,
              optimizer: torch.optim.Optimizer | None, rollout_policy: Any | None) -> _Run:
        """Seed, reset or restore the weights (and the optimizer, teacher, buffer, counters), shard them
        (FSDP), hand the adapter to the rollout backend, open the envs and the progress bar."""
        spec, model = config.spec, policy.model
        if config.sharding == "fsdp":   # refused before anything is written
            D.require_process_group("sharding='fsdp'")
            if rollout_policy is not None:
                raise ValueError("sharding='fsdp' cannot hand its adapter to a rollout_policy")
        _seed_everything(config.seed)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters")
        require_master_weights(params)
        files = RunFiles(config.checkpoint_dir) if config.checkpoint_dir else None
        resuming = files is not None and config.resume and files.has_checkpoint()
        if config.reset_lora and not resuming:
            _reset_lora(model, config.seed)
        run = cls(policy=policy, config=config,
                  optimizer=optimizer or torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay),
                  teacher=TeacherWeights(model, config.teacher, config.ema_rate), buffer=SuccessBuffer(),
                  reflector=reflector or make_reflector(spec, rollout_policy or policy, config),
                  expert_demos=_expert_demos(config) if spec.name == "full_demo" and config.demo_fallback else None,
                  # under torch.distributed only rank 0 writes files; every rank reads a checkpoint
                  files=files, main=D.is_main(), rollout_policy=rollout_policy)
        if resuming:
            run.counters, run.metrics = files.restore(model=model, optimizer=run.optimizer, teacher=run.teacher,
                                                      buffer=run.buffer)
            if run.main:
                files.write_config(config)
            run.resumed_from = run.counters.iterations
        elif files is not None and run.main:
            files.start_fresh(config)
            _snapshot(policy, files, run.counters, config)   # budget 0: the starting weights
        D.broadcast_parameters(model)                         # every rank starts from rank 0's weights
        if config.sharding == "fsdp":                         # after restoring: full state in, shards out
            D.fsdp_shard(model, optimizer=run.optimizer, teacher=run.teacher,
                         mixed_precision=None if config.mixed_precision == "none" else config.mixed_precision)
        if rollout_policy is not None:
            _hand_over_adapter(policy, rollout_policy, files)
        run.envs = _make_envs(config)
        run.bar = _progress_bar(config, run.counters.turns) if run.main else None
        return run

    def budget_left(self) -> bool:
        c, cfg = self.counters, self.config
        return c.turns < cfg.turn_budget and (cfg.max_updates is None or c.iterations < cfg.max_updates)

    def record(self, batch: Batch, stats: UpdateStats, note_counts: dict[str, int],
               seconds: dict[str, float]) -> None:
        """Count the iteration, log its episodes and metrics, snapshot the weights, save the checkpoint."""
        c, episodes, files = self.counters, batch.episodes, self.files
        turns_before = c.turns
        c.iterations += 1
        c.optimizer_steps += int(stats.stepped)
        c.tokens_trained += stats.tokens_trained
        c.turns += sum(len(ep.turns) for ep in episodes)
        c.episodes += len(episodes)
        c.successes += sum(ep.success for ep in episodes)
        if self.rollout_policy is not None and stats.stepped:
            _hand_over_adapter(self.policy, self.rollout_policy, files)
        row = _metrics_row(c, episodes, stats, seconds)
        row.update(zip(note_counts, (int(x) for x in D.global_counts(list(note_counts.values())))))
        self.metrics.append(row)
        model = self.policy.model
        with D.full_state(model, self.optimizer, self.teacher) if files is not None else contextlib.nullcontext():
            if files is not None and self.main:   # FSDP: every rank gathered the full state above
                for i, ep in enumerate(episodes):
                    ep.metadata["train_iteration"] = c.iterations
                    if batch.reflections is not None:
                        ep.metadata["reflection"] = batch.reflections[i].to_json()
                files.log(episodes, row)
                # the model at any budget is the first snapshot at or past it: every iteration's, or with
                # snapshot_budgets only those of the iterations that reach a budget
                if self.config.snapshot_budgets is None:
                    _snapshot(self.policy, files, c, self.config,
                              weights_of=None if stats.stepped else max(list_snapshots(files.dir)))
                elif any(turns_before < int(b) <= c.turns for b in self.config.snapshot_budgets):
                    _snapshot(self.policy, files, c, self.config)
                files.save(model=model, optimizer=self.optimizer, teacher=self.teacher, buffer=self.buffer,
                           counters=c)
        if self.bar is not None:
            self.bar.update(sum(len(ep.turns) for ep in episodes))
            self.bar.set_postfix(loss=f"{stats.loss:.4f}", succ=f"{row['success_rate']:.2f}")

    def close(self) -> None:
        for e in self.envs:
            e.close()
        if self.bar is not None:
            self.bar.close()

    def result(self) -> TrainResult:
        c = self.counters
        return TrainResult(iterations=c.iterations, optimizer_steps=c.optimizer_steps,
                           tokens_trained=c.tokens_trained, turns_used=c.turns, episodes=c.episodes,
                           train_success_rate=c.successes / c.episodes if c.episodes else 0.0,
                           metrics=self.metrics, checkpoint_dir=str(self.files.dir) if self.files else None,
                           resumed_from_iteration=self.resumed_from)


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


def make_reflector(spec: MethodSpec, policy: Any, config: TrainConfig) -> Reflector | None:
    """The method's reflector (``config.reflector`` overrides its kind): none, the rule reflector (with the
    recorded oracle actions as targets for a privileged method), or the model reflector on ``policy``."""
    if spec.reflector is None:
        return None
    kind = {"llm": "model"}.get(config.reflector or "", config.reflector) or spec.reflector
    if kind == "rules":
        return RuleReflector(target_fn=oracle_target) if spec.oracle else RuleReflector()
    return LLMReflector(policy, max_new_tokens=config.reflector_max_new_tokens, max_retries=config.reflector_retries,
                        tokens_per_turn=config.reflector_tokens_per_turn,
                        style="legacy" if config.note_style == "legacy" else "current")


def note_options(config: TrainConfig, iteration: int, expert_demos: ExpertDemos | None = None) -> NoteOptions:
    """The note builders' options for one iteration (the shuffled donors' seed changes per iteration)."""
    return NoteOptions(envfb_max_chars=config.envfb_max_chars, demo_max_chars=config.demo_max_chars,
                       min_confidence=config.min_confidence, seed=config.seed * 1_000_003 + iteration,
                       expert_demo=expert_demos, note_style=config.note_style)


def _expert_demos(config: TrainConfig) -> ExpertDemos | None:
    """Full-demo's fallback demonstrations, when the env has an expert (``None`` otherwise)."""
    import hero_gym

    from .warmstart import make_expert

    env = hero_gym.make(config.env_id, **config.env_kwargs)
    try:
        make_expert(env)
    except ValueError:
        return None
    finally:
        env.close()
    return ExpertDemos(config.env_id, config.env_kwargs, max_turns=config.max_turns)


def _make_envs(config: TrainConfig) -> list[Any]:
    import hero_gym

    kw = dict(config.env_kwargs)
    if config.max_turns is not None:
        kw["max_turns"] = config.max_turns
    n = len(D.shard(range(config.tasks_per_update))) * config.group_size   # this rank's share
    if config.spec.oracle:   # a privileged ceiling: record the env's oracle action before every step
        return [recording_oracle(hero_gym.make(config.env_id, **kw), f"method {config.method!r}") for _ in range(max(1, n))]
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


def collect_batch(policy: Any, envs: list[Any], config: TrainConfig, iteration: int) -> list[Episode]:
    """One whole batch of training episodes (never cut by the run's budget)."""
    from .policy import SamplingConfig
    from .rollout import collect

    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                              seed=config.seed * 7919 + iteration)
    return collect(policy, envs, tasks=D.shard(_tasks_for(iteration, config)), group_size=config.group_size,
                   sampling=sampling, tool_prompt=TOOL_PROMPTS[config.tool_prompt],
                   max_context_tokens=policy_context_window(policy))


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


def require_master_weights(params: Sequence[torch.Tensor]) -> None:
    """Refuse half-precision trainable weights (no fp32 master copy for the optimizer)."""
    low = sorted({str(p.dtype) for p in params if p.dtype in (torch.bfloat16, torch.float16)})
    if low:
        raise ValueError(f"the trainable weights are {', '.join(low)}: training them directly has no fp32 master "
                         "weights (AdamW steps below their resolution are lost). Load the model in float32 for full "
                         "fine-tuning, train a LoRA adapter (its weights are fp32), or use sharding='fsdp' with "
                         "mixed_precision='bf16'")


def _snapshot(policy: Any, files: RunFiles, counters: RunCounters, config: TrainConfig, **kw: Any) -> None:
    save_snapshot(policy, files.dir, counters, dtype=torch.bfloat16 if config.snapshot_dtype == "bfloat16" else None,
                  **kw)


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
    max_cached_tokens: int | None = None,
) -> EvalResult:
    """Roll the policy out (greedy by default) and report success rate, mean reward and mean turns.

    Tasks: ``task_indices`` (``options={"task_index": i}``, with ``seeds[i]`` or ``i`` as reset seed),
    else ``seeds``, else ``range(n_episodes)`` as reset seeds. ``n_episodes`` with ``task_indices``
    or ``seeds`` truncates the list. ``max_turns`` overrides the env's per-episode turn cap.
    No training budget is spent. ``tool_prompt`` as in :class:`TrainConfig`. ``policy`` may be a
    :class:`~hero_gym.agents.vllm_policy.VLLMPolicy` (its ``max_model_len`` caps the context).
    ``num_envs`` episodes run at once; ``max_cached_tokens`` caps their KV caches together (see
    :func:`~hero_gym.agents.rollout.collect`).
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
        max_context_tokens = policy_context_window(policy)
    env_kwargs = dict(env_kwargs or {})
    if max_turns is not None:
        env_kwargs["max_turns"] = max_turns
    eps = collect(policy, env_id, tasks=tasks, sampling=sampling, env_kwargs=env_kwargs, num_envs=num_envs,
                  max_context_tokens=max_context_tokens, progress=progress, tool_prompt=TOOL_PROMPTS[tool_prompt],
                  max_cached_tokens=max_cached_tokens)
    n = max(1, len(eps))
    return EvalResult(success_rate=sum(e.success for e in eps) / n,
                      mean_reward=float(sum(e.total_reward for e in eps) / n),
                      mean_turns=float(sum(len(e.turns) for e in eps) / n), episodes=eps)
