"""The HERO training loop (and its baselines), readable top to bottom.

One iteration of :func:`train`::

    episodes = collect(policy, env, tasks x group_size)       # token-exact rollouts, turns counted
    reflections = reflector.reflect(episodes)                  # hero only: hindsight, per turn
    notes = build_notes(method, episodes, reflections, ...)     # the only difference between methods
    update(policy, optimizer, episodes, notes)                  # teacher scores student tokens; step
    append episodes + metrics to JSONL; checkpoint              # so a killed run resumes exactly

Methods (``TrainConfig.method``):

* ``"hero"``      — distil toward the self-teacher that sees the turn's hindsight diagnosis.
* ``"envfb_sd"``  — distil toward the self-teacher that sees the raw next observation.
* ``"full_demo"`` — distil toward the self-teacher that sees a successful trajectory of the task.
* ``"grpo"``      — no teacher; group-normalised outcome advantages, clipped surrogate.

Any distillation method can be blended with the GRPO loss (``grpo_weight``).

Budget: training cost is counted in **environment turns** (``turn_budget``), the resource the
HERO claim is about. Resume: after every update the trainer writes a checkpoint (trainable
weights, optimiser, teacher EMA, success buffer, RNG states, counters, number of logged episodes)
atomically; on restart it truncates the episode/metrics logs to what the checkpoint covers and
continues, so no episode is lost or logged twice.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from hero_gym.records import Episode, save_jsonl

from . import losses as L
from .reflector import LLMReflector, Reflection, Reflector, RuleReflector
from .scoring import (
    build_layout,
    student_logits,
    teacher_logits,
    teacher_logits_from_cache,
    teacher_logits_prefix_cache,
)
from .rollout import TOOL_PROMPTS
from .teachers import Method, SuccessBuffer, TeacherKind, TeacherWeights, build_notes

__all__ = [
    "TrainConfig",
    "TrainResult",
    "EvalResult",
    "UpdateStats",
    "train",
    "evaluate",
    "update",
    "teacher_contexts_for",
]

LossKind = Literal["forward_kl", "reverse_kl", "jsd", "sampled"]


@dataclass
class TrainConfig:
    """Everything a training run needs besides the policy. Defaults are sized for CPU smoke runs.

    Attributes:
        method: ``"hero"`` | ``"envfb_sd"`` | ``"full_demo"`` | ``"grpo"`` (see module docstring).
        env_id: a registered env id, e.g. ``"hero_gym/Lookup-v0"``.
        env_kwargs: keyword arguments for ``hero_gym.make`` (e.g. ``{"num_items": 4}``).
        turn_budget: total environment turns the run may spend on training rollouts.
        max_turns: per-episode turn cap (``None`` = the env's default).
        task_indices: tasks to train on, cycled in order (passed as ``options={"task_index": i}``);
            ``None`` draws tasks from per-group reset seeds.
        tasks_per_update: distinct tasks per update (each rolled out ``group_size`` times).
        group_size: rollouts per task (GRPO groups; siblings for the full-demo teacher).
        max_new_tokens / temperature: sampling for training rollouts (temperature 1 keeps the
            recorded sampling log-probs equal to the model's, so importance ratios are exact).
        lr, weight_decay, max_grad_norm: AdamW settings and gradient clipping.
        loss: per-token distillation loss: ``"forward_kl"`` KL(T||S), ``"reverse_kl"`` KL(S||T),
            ``"jsd"`` generalised JSD(``jsd_alpha``), or ``"sampled"`` (sampled-token estimator).
        topk: ``None`` = full vocabulary; ``k`` = teacher top-k plus one tail bucket.
        is_clip: truncation of the per-token importance weight ``pi_now/pi_sampled`` in the
            distillation loss (``None`` = no weighting).
        clip_eps: PPO clip range for the GRPO surrogate and the sampled-token loss.
        teacher: ``"live"`` (current weights, stop-grad) | ``"ema"`` | ``"base"`` (adapter off).
        ema_decay: EMA decay for ``teacher="ema"``.
        teacher_scoring: how the teacher's per-turn contexts are scored (all give the same numbers).
            ``"auto"``/``"kv_cache"``: KV-cache prefix reuse — the live teacher reuses the student
            forward's own cache and encodes only the note+action blocks; EMA/base teachers first
            fill a cache over the shared prefix with their weights, then encode the blocks.
            ``"packed"``: one forward per episode over prefix + all blocks with a 4-D mask.
        grpo_weight: blend ``(1-w) L_distill + w L_grpo`` for distillation methods (0 = pure
            distillation); ignored for ``method="grpo"``.
        kl_coef: GRPO KL-to-reference (adapter off) coefficient; 0 skips the reference pass.
        reflector: ``"rules"`` (:class:`RuleReflector`) or ``"llm"`` (:class:`LLMReflector` with the
            policy itself); or pass any :class:`Reflector` to :func:`train`.
        reflector_max_new_tokens / reflector_retries: generation length and bounded retries of the
            LLM reflector.
        envfb_max_chars / demo_max_chars: note truncation for the baselines.
        micro_batch_episodes: episodes per forward/backward (gradient accumulation over the batch;
            the loss normalisation is over the whole batch either way). 1 (default) means one
            unpadded sequence per forward, so SDPA models run the causal kernel without a padding
            mask and never materialise ``L x L`` attention weights (on CPU padded batches of long
            episodes cost gigabytes of attention activations); raise it on GPUs for throughput.
        loss_chunk_tokens: action tokens per chunk of the vocabulary-sized loss computation.
        checkpoint_dir: where checkpoints and JSONL logs go (``None`` = no checkpoints, no resume).
        resume: continue from ``checkpoint_dir`` if it holds a checkpoint.
        seed: seeds task order, sampling and torch.
        max_updates: optional cap on the number of updates (besides the turn budget).
        progress: show a progress bar.
        tool_prompt: how tools are described in the system message when the chat template takes no
            ``tools``: ``"full"`` (every JSON schema) or ``"compact"`` (one line per tool; for small
            models and short contexts, e.g. the CPU benchmark).
    """

    method: Method = "hero"
    env_id: str = "hero_gym/Lookup-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    turn_budget: int = 200
    max_turns: int | None = None
    task_indices: list[int] | None = None
    tasks_per_update: int = 2
    group_size: int = 4
    max_new_tokens: int = 128
    temperature: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    loss: LossKind = "forward_kl"
    jsd_alpha: float = 0.5
    topk: int | None = None
    is_clip: float | None = 2.0
    clip_eps: float = 0.2
    teacher: TeacherKind = "live"
    teacher_scoring: Literal["auto", "kv_cache", "packed"] = "auto"
    ema_decay: float = 0.9
    grpo_weight: float = 0.0
    kl_coef: float = 0.0
    reflector: Literal["rules", "llm"] = "rules"
    reflector_max_new_tokens: int = 768
    reflector_retries: int = 2
    envfb_max_chars: int = 600
    demo_max_chars: int = 2000
    micro_batch_episodes: int = 1
    loss_chunk_tokens: int = 256
    checkpoint_dir: str | None = None
    resume: bool = True
    seed: int = 0
    max_updates: int | None = None
    progress: bool = False
    tool_prompt: Literal["full", "compact"] = "full"

    def __post_init__(self) -> None:
        if self.method not in ("hero", "envfb_sd", "full_demo", "grpo"):
            raise ValueError(f"unknown method {self.method!r}")
        if self.loss not in ("forward_kl", "reverse_kl", "jsd", "sampled"):
            raise ValueError(f"unknown loss {self.loss!r}")
        if not 0.0 <= self.grpo_weight <= 1.0:
            raise ValueError("grpo_weight must be in [0, 1]")
        if self.group_size < 1 or self.tasks_per_update < 1:
            raise ValueError("group_size and tasks_per_update must be >= 1")


@dataclass
class UpdateStats:
    """What one update did (also one line of ``metrics.jsonl``)."""

    loss: float = 0.0
    distill_loss: float | None = None
    grpo_loss: float | None = None
    distill_tokens: int = 0
    action_tokens: int = 0
    masked_turns: int = 0
    scored_turns: int = 0
    grad_norm: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """Returned by :func:`train`."""

    updates: int
    turns_used: int
    episodes: int
    train_success_rate: float
    metrics: list[dict[str, Any]]
    checkpoint_dir: str | None
    resumed_from_update: int = 0


@dataclass
class EvalResult:
    """Returned by :func:`evaluate`."""

    success_rate: float
    mean_reward: float
    mean_turns: float
    episodes: list[Episode]

    def summary(self) -> dict[str, float]:
        return {"success_rate": self.success_rate, "mean_reward": self.mean_reward,
                "mean_turns": self.mean_turns, "n_episodes": float(len(self.episodes))}


# ======================================================================================
# The update
# ======================================================================================

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


def _chunked_backward(logits: torch.Tensor, loss_fn: Any, chunk: int) -> float:
    """Backpropagate ``sum_chunks loss_fn(slice, logits[slice])`` through ``logits`` chunk by chunk.

    Vocabulary-sized temporaries (softmaxes, products) exist for one chunk at a time; the gradient
    w.r.t. the logits is accumulated and sent into the model in one backward call.
    """
    leaf = logits.detach().requires_grad_(True)
    total = 0.0
    n = leaf.shape[0]
    for s in range(0, n, chunk):
        sl = slice(s, min(n, s + chunk))
        val = loss_fn(sl, leaf[sl])
        if val is None:
            continue
        val.backward()
        total += float(val.detach())
    if leaf.grad is not None:
        logits.backward(leaf.grad)
    return total


def update(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[Episode],
    notes: Sequence[Sequence[str | None]] | None,
    config: TrainConfig,
    *,
    teacher: TeacherWeights | None = None,
    advantages: torch.Tensor | None = None,
    renderer: Any = None,
) -> UpdateStats:
    """One optimiser step on a batch of episodes.

    Distillation term (when ``notes`` has any note and the method is not GRPO): for every action
    token of a turn with a note, the divergence between the student's next-token distribution
    (in the context the model saw) and the teacher's (same model/teacher weights, context with the
    note), weighted by truncated importance ratios; token-level mean. GRPO term (method ``grpo``
    or ``grpo_weight > 0``): clipped surrogate with the episode's group-normalised advantage on
    every action token; token-level mean. Only sampled action tokens ever enter a loss.
    """
    stats = UpdateStats()
    model = policy.model
    pad = getattr(policy, "pad_token_id", 0) or 0
    renderer = renderer or _renderer_for(policy)
    teacher = teacher or TeacherWeights(model, "live")
    t0 = time.perf_counter()
    layout = build_layout(episodes)
    stats.action_tokens = layout.num_tokens
    if layout.num_tokens == 0:
        return stats
    use_grpo = config.method == "grpo" or config.grpo_weight > 0.0
    use_distill = config.method != "grpo" and notes is not None
    w_grpo = 1.0 if config.method == "grpo" else config.grpo_weight
    tctx = teacher_contexts_for(renderer, episodes, notes) if use_distill else None
    if use_distill:
        scored = {(s.episode, s.turn) for s in layout.spans if tctx[s.episode][s.turn] is not None}
        stats.scored_turns = len(scored)
        stats.masked_turns = len(layout.spans) - len(scored)
        distill_mask_all = layout.token_mask(scored)
        stats.distill_tokens = int(distill_mask_all.sum())
        if stats.distill_tokens == 0:
            use_distill = False
    if not use_distill and not use_grpo:
        return stats
    if use_grpo and advantages is None:
        advantages = L.group_advantages([ep.total_reward for ep in episodes],
                                        [ep.task_id or ep.episode_id for ep in episodes])
    w_dist = (1.0 - w_grpo) if (use_distill and use_grpo) else 1.0
    n_dist = max(1, stats.distill_tokens)
    n_all = layout.num_tokens

    optimizer.zero_grad(set_to_none=True)
    dsum = gsum = 0.0
    # micro-batches of chains, grouped by episode
    chains_by_ep: dict[int, list[int]] = {}
    for ci, ch in enumerate(layout.chains):
        chains_by_ep.setdefault(ch.episode, []).append(ci)
    ep_ids = sorted(chains_by_ep)
    mb = max(1, config.micro_batch_episodes)
    dev = next(model.parameters()).device
    t_teacher = t_student = 0.0
    for b in range(0, len(ep_ids), mb):
        cidx = [ci for e in ep_ids[b:b + mb] for ci in chains_by_ep[e]]
        # flattened token range of these chains (chains are contiguous in layout order)
        spans = [s for ci in cidx for s in layout.spans if s.episode == layout.chains[ci].episode
                 and s.turn in layout.chains[ci].turns]
        tok = torch.cat([torch.arange(s.start, s.start + s.length) for s in spans])
        ids = layout.action_ids[tok].to(dev)
        beh = layout.behaviour_logprobs[tok].to(dev)
        t_logits = t_mask = None
        reuse_kv = use_distill and teacher.kind == "live" and config.teacher_scoring in ("auto", "kv_cache")
        if use_distill and not reuse_kv:
            t1 = time.perf_counter()
            score = teacher_logits if config.teacher_scoring == "packed" else teacher_logits_prefix_cache
            with torch.no_grad(), teacher.active():
                t_logits, t_mask = score(model, episodes, tctx, layout, chain_indices=cidx, pad_id=pad,
                                         as_hidden=True)
            t_mask = t_mask.to(dev)
            t_teacher += time.perf_counter() - t1
        ref_lp = None
        if use_grpo and config.kl_coef > 0 and hasattr(model, "disable_adapter"):
            with torch.no_grad(), model.disable_adapter():
                r_logits, _ = student_logits(model, episodes, layout, chain_indices=cidx, pad_id=pad)
                ref_lp = F.log_softmax(r_logits.float(), -1).gather(-1, ids[:, None]).squeeze(-1)
                del r_logits
        t1 = time.perf_counter()
        if reuse_kv:
            # live teacher = current weights: the student's own forward provides the shared prefix KV
            s_logits, _, cache = student_logits(model, episodes, layout, chain_indices=cidx, pad_id=pad,
                                                return_cache=True)
            t2 = time.perf_counter()
            t_logits, t_mask = teacher_logits_from_cache(model, episodes, tctx, layout, cache, chain_indices=cidx,
                                                         pad_id=pad, as_hidden=True)
            t_mask = t_mask.to(dev)
            del cache
            t_teacher += time.perf_counter() - t2
            t1 += time.perf_counter() - t2
        else:
            s_logits, _ = student_logits(model, episodes, layout, chain_indices=cidx, pad_id=pad)
        adv_tok = advantages[layout.episode_of_token[tok]].to(dev) if use_grpo else None

        def chunk_loss(sl: slice, z: torch.Tensor) -> torch.Tensor | None:
            nonlocal dsum, gsum
            lp_all = F.log_softmax(z.float(), -1)
            lp = lp_all.gather(-1, ids[sl, None]).squeeze(-1)
            b_lp = torch.where(torch.isnan(beh[sl]), lp.detach(), beh[sl])
            total = None
            if use_distill:
                m = t_mask[sl]
                if m.any():
                    if config.loss == "sampled":
                        t_lp = F.log_softmax(t_logits[sl].float(), -1).gather(-1, ids[sl, None]).squeeze(-1)
                        per = L.sampled_token_loss(lp, t_lp, b_lp, config.clip_eps)
                        w = torch.ones_like(per)
                    else:
                        # same as L.distill_token_loss(z, t_logits[sl], ...) but reusing lp_all
                        s_lp, t_lp = lp_all, F.log_softmax(t_logits[sl].float(), -1)
                        if config.topk is not None:
                            s_lp, t_lp = L.topk_with_tail(s_lp, t_lp, config.topk)
                        per = L.divergence(s_lp, t_lp, config.loss, config.jsd_alpha)
                        w = L.importance_weights(lp, b_lp, config.is_clip)
                    d = (per * w * m.float()).sum() / n_dist
                    dsum += float(d.detach())
                    total = w_dist * d
            if use_grpo:
                per = L.grpo_token_loss(lp, b_lp, adv_tok[sl], clip_eps=config.clip_eps,
                                        ref_logp=None if ref_lp is None else ref_lp[sl], kl_coef=config.kl_coef)
                g = per.sum() / n_all
                gsum += float(g.detach())
                total = w_grpo * g if total is None else total + w_grpo * g
            return total

        _chunked_backward(s_logits, chunk_loss, max(1, config.loss_chunk_tokens))
        del s_logits, t_logits
        t_student += time.perf_counter() - t1
    params = [p for p in model.parameters() if p.requires_grad]
    gn = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm if config.max_grad_norm else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    teacher.update()
    stats.grad_norm = float(gn)
    stats.distill_loss = dsum if use_distill else None
    stats.grpo_loss = gsum if use_grpo else None
    stats.loss = (w_dist * dsum if use_distill else 0.0) + (w_grpo * gsum if use_grpo else 0.0)
    stats.seconds = {"teacher": t_teacher, "student": t_student, "update": time.perf_counter() - t0}
    return stats


# ======================================================================================
# Checkpoints and logs
# ======================================================================================

CKPT_FILE = "checkpoint.pt"
EPISODES_FILE = "episodes.jsonl"
METRICS_FILE = "metrics.jsonl"


def _rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ValueError(f"checkpoint has parameters this model lacks: {missing[:5]}")
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v.to(params[n].device))


def _truncate_lines(path: Path, n: int) -> None:
    """Keep the first ``n`` complete lines of ``path`` (drops lines from an uncommitted iteration)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        lines = f.read().split(b"\n")
    kept = [ln for ln in lines if ln.strip()][:n]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(b"".join(ln + b"\n" for ln in kept))
    os.replace(tmp, path)


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)   # atomic: a kill leaves the previous checkpoint intact


def _append_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ======================================================================================
# train / evaluate
# ======================================================================================

def _hand_over_adapter(policy: Any, rollout_policy: Any, ckpt_dir: Path | None) -> None:
    """Save the trained adapter and point the rollout backend (vLLM) at it."""
    import tempfile

    target = (ckpt_dir if ckpt_dir is not None else Path(tempfile.mkdtemp(prefix="hero_gym_adapter_"))) / "rollout_adapter"
    policy.save(target)
    rollout_policy.set_lora(target)


def _make_reflector(policy: Any, config: TrainConfig) -> Reflector:
    if config.reflector == "llm":
        return LLMReflector(policy, max_new_tokens=config.reflector_max_new_tokens,
                            max_retries=config.reflector_retries)
    return RuleReflector()


def _tasks_for(update_idx: int, config: TrainConfig) -> list[Any]:
    """Deterministic task list of iteration ``update_idx`` (so a resumed run draws the same tasks)."""
    from .rollout import Task

    tasks = []
    for j in range(config.tasks_per_update):
        k = update_idx * config.tasks_per_update + j
        seed = config.seed * 1_000_003 + k
        if config.task_indices:
            idx = config.task_indices[k % len(config.task_indices)]
            tasks.append(Task(seed=seed, options={"task_index": idx}))
        else:
            tasks.append(Task(seed=seed))
    return tasks


def train(
    policy: Any,
    config: TrainConfig,
    *,
    reflector: Reflector | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    rollout_policy: Any | None = None,
) -> TrainResult:
    """Train ``policy`` (an :class:`~hero_gym.agents.policy.HFPolicy`) with ``config.method`` until
    ``config.turn_budget`` environment turns are spent (or ``config.max_updates`` updates).

    Each iteration collects ``tasks_per_update x group_size`` episodes, builds the method's notes
    (reflecting first for HERO; ``reflector`` overrides ``config.reflector``), performs one
    :func:`update`, then appends the episodes to ``<checkpoint_dir>/episodes.jsonl`` and the stats to
    ``metrics.jsonl`` and atomically rewrites ``checkpoint.pt``. With ``config.resume`` and an
    existing checkpoint the run continues from it (logs truncated to the checkpoint first).

    ``rollout_policy`` (e.g. a :class:`~hero_gym.agents.vllm_policy.VLLMPolicy` on the same base
    model) generates the rollouts instead of ``policy``; ``policy`` is still the one trained. After
    every update the trained LoRA adapter is saved (under ``checkpoint_dir``, else a temporary
    folder) and handed to ``rollout_policy.set_lora``, so rollouts always use the current weights.
    """
    from .policy import SamplingConfig
    from .rollout import TurnBudget, collect

    model = policy.model
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the policy has no trainable parameters")
    optimizer = optimizer or torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    teacher = TeacherWeights(model, config.teacher, config.ema_decay)
    buffer = SuccessBuffer()
    reflector = reflector or (_make_reflector(policy, config) if config.method == "hero" else None)
    budget = TurnBudget(total=config.turn_budget)
    updates = episodes_logged = 0
    successes = 0
    metrics: list[dict[str, Any]] = []
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    resumed_from = 0
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ck = ckpt_dir / CKPT_FILE
        if config.resume and ck.exists():
            state = torch.load(ck, map_location="cpu", weights_only=False)
            _load_trainable(model, state["trainable"])
            optimizer.load_state_dict(state["optimizer"])
            teacher.load_state_dict(state["teacher"])
            buffer.load_state_dict(state["success_buffer"])
            _set_rng_state(state["rng"])
            updates, episodes_logged = state["updates"], state["episodes_logged"]
            budget.spent, successes = state["turns_used"], state["successes"]
            resumed_from = updates
            _truncate_lines(ckpt_dir / EPISODES_FILE, episodes_logged)
            _truncate_lines(ckpt_dir / METRICS_FILE, updates)
            if (ckpt_dir / METRICS_FILE).exists():
                metrics = [json.loads(x) for x in (ckpt_dir / METRICS_FILE).read_text().splitlines() if x.strip()]
        elif not config.resume:
            for f in (CKPT_FILE, EPISODES_FILE, METRICS_FILE):
                (ckpt_dir / f).unlink(missing_ok=True)
        (ckpt_dir / "config.json").write_text(json.dumps(asdict(config), indent=2, default=str))

    renderer = _renderer_for(policy)
    env_kwargs = dict(config.env_kwargs)
    if config.max_turns is not None:
        env_kwargs["max_turns"] = config.max_turns
    import hero_gym

    envs = [hero_gym.make(config.env_id, **env_kwargs) for _ in range(config.tasks_per_update * config.group_size)]
    bar = None
    if config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.turn_budget, initial=budget.spent, desc=f"train[{config.method}]", unit="turn")
    try:
        metrics, updates, episodes_logged, successes = _train_loop(
            policy, config, envs, optimizer, teacher, buffer, reflector, budget, renderer, ckpt_dir, bar,
            metrics, updates, episodes_logged, successes, rollout_policy)
    finally:
        for e in envs:
            e.close()
        if bar is not None:
            bar.close()
    return TrainResult(updates=updates, turns_used=budget.spent, episodes=episodes_logged,
                       train_success_rate=successes / episodes_logged if episodes_logged else 0.0,
                       metrics=metrics, checkpoint_dir=str(ckpt_dir) if ckpt_dir else None,
                       resumed_from_update=resumed_from)


def _train_loop(policy, config, envs, optimizer, teacher, buffer, reflector, budget, renderer, ckpt_dir, bar,
                metrics, updates, episodes_logged, successes, rollout_policy=None):
    """The body of :func:`train` (split out so env instances are always closed)."""
    from .policy import SamplingConfig
    from .rollout import collect

    model = policy.model
    while not budget.exhausted and (config.max_updates is None or updates < config.max_updates):
        t0 = time.perf_counter()
        # 1. rollouts (deterministic per iteration: tasks and sampling seed derive from the counter)
        sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                  seed=config.seed * 7919 + updates)
        spent_before = budget.spent
        episodes = collect(rollout_policy or policy, envs, tasks=_tasks_for(updates, config),
                           group_size=config.group_size,
                           sampling=sampling, budget=budget, tool_prompt=TOOL_PROMPTS[config.tool_prompt],
                           max_context_tokens=getattr(model.config, "max_position_embeddings", None))
        t_collect = time.perf_counter() - t0
        if not episodes:
            break
        # 2. hindsight + notes
        t1 = time.perf_counter()
        reflections: list[Reflection] | None = None
        if config.method == "hero":
            reflections = reflector.reflect(episodes)  # type: ignore[union-attr]
        notes = build_notes(config.method, episodes, reflections=reflections, success_buffer=buffer,
                            envfb_max_chars=config.envfb_max_chars, demo_max_chars=config.demo_max_chars)
        buffer.add(episodes)
        t_reflect = time.perf_counter() - t1
        # 3. one update
        stats = update(policy, optimizer, episodes, notes, config, teacher=teacher, renderer=renderer)
        updates += 1
        if rollout_policy is not None:
            _hand_over_adapter(policy, rollout_policy, ckpt_dir)
        successes += sum(ep.success for ep in episodes)
        # 4. logs + checkpoint (episodes first; the checkpoint commits them)
        row = {"update": updates, "turns_used": budget.spent, "episodes": episodes_logged + len(episodes),
               "success_rate": sum(ep.success for ep in episodes) / len(episodes),
               "mean_reward": float(np.mean([ep.total_reward for ep in episodes])),
               "mean_turns": float(np.mean([len(ep.turns) for ep in episodes])),
               **{k: v for k, v in asdict(stats).items() if k != "seconds"},
               "seconds": {**stats.seconds, "collect": t_collect, "reflect": t_reflect,
                           "iteration": time.perf_counter() - t0}}
        metrics.append(row)
        if ckpt_dir is not None:
            for ep, refl in zip(episodes, reflections or [None] * len(episodes)):
                ep.metadata["train_update"] = updates
                if refl is not None:
                    ep.metadata["reflection"] = refl.to_json()
            save_jsonl(episodes, ckpt_dir / EPISODES_FILE, append=True)
            _append_jsonl(ckpt_dir / METRICS_FILE, [row])
            _save_checkpoint(ckpt_dir / CKPT_FILE, {
                "trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
                "teacher": teacher.state_dict(), "success_buffer": buffer.state_dict(), "rng": _rng_state(),
                "updates": updates, "episodes_logged": episodes_logged + len(episodes),
                "turns_used": budget.spent, "successes": successes, "config": asdict(config)})
        episodes_logged += len(episodes)
        if bar is not None:
            bar.update(budget.spent - spent_before)
            bar.set_postfix(loss=f"{stats.loss:.4f}", succ=f"{row['success_rate']:.2f}")
    return metrics, updates, episodes_logged, successes


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
        max_context_tokens = getattr(getattr(policy.model, "config", None), "max_position_embeddings", None)
    env_kwargs = dict(env_kwargs or {})
    if max_turns is not None:
        env_kwargs["max_turns"] = max_turns
    eps = collect(policy, env_id, tasks=tasks, sampling=sampling, env_kwargs=env_kwargs, num_envs=num_envs,
                  max_context_tokens=max_context_tokens, progress=progress, tool_prompt=TOOL_PROMPTS[tool_prompt])
    n = max(1, len(eps))
    return EvalResult(success_rate=sum(e.success for e in eps) / n,
                      mean_reward=float(sum(e.total_reward for e in eps) / n),
                      mean_turns=float(sum(len(e.turns) for e in eps) / n), episodes=eps)
