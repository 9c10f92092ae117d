"""One optimizer step on a batch: which tokens enter which loss, teacher scoring, the loss, the step.

:func:`update` reads top to bottom::

    plan = plan_losses(...)                        # per action token: distillation (a note), GRPO (advantage)
    for each micro-batch:
        teacher = teacher_scores(...)              # the teacher's logits: note inserted before the action
        student_backward(...)                      # the student's logits, chunk by chunk: loss -> backward
    step(...)                                      # clip, optimizer step, EMA teacher

The per-token losses are :func:`distillation_loss` (SDPO's divergence between the student's and the
teacher's next-token distributions on the student's top-k + tail, times truncated importance weights)
and GRPO's clipped surrogate (:func:`hero_gym.agents.losses.grpo_token_loss`). Only sampled action
tokens ever enter a loss. Under torch.distributed every count is the whole batch's (all ranks).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from hero_gym.records import Episode

from . import distributed as D
from . import losses as L
from .scoring import TokenLayout, build_layout, student_hidden, teacher_logits_prefix_cache
from .teachers import TeacherWeights

if TYPE_CHECKING:
    from .trainer import TrainConfig

__all__ = ["LossPlan", "TokenBatch", "UpdateStats", "chunk_loss", "distillation_loss", "episode_finished",
           "micro_batches", "plan_losses", "teacher_contexts_for", "teacher_scores", "update"]


@dataclass
class UpdateStats:
    """What one :func:`update` did (also part of a ``metrics.jsonl`` row).

    ``stepped``: an optimizer step was taken (not when no token carried a training signal);
    ``tokens_trained``: action tokens that entered a loss with a non-zero signal; ``distill_tokens``:
    action tokens of turns with a teacher note; ``grpo_tokens``: action tokens of episodes the env ended (:func:`episode_finished`).
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
    truncated importance ratios (:func:`distillation_loss`); mean over those tokens. GRPO (method ``grpo``
    or ``grpo_weight > 0``): clipped surrogate with the episode's group-normalised advantage on every
    action token of episodes the env ended (terminated or truncated by its turn cap:
    :func:`episode_finished`); mean over those tokens. Only sampled action tokens ever enter a loss.
    """
    model = policy.model
    teacher = teacher or TeacherWeights(model, config.teacher, config.ema_rate)
    layout = build_layout(episodes)
    plan = plan_losses(policy, episodes, notes, layout, config)
    counts = _whole_batch_counts(layout, plan)
    if plan.global_tokens_trained == 0:
        return UpdateStats(stepped=False, loss=0.0, distill_loss=None, grpo_loss=None, grad_norm=0.0, **counts)
    t0 = time.perf_counter()
    seconds = {"teacher": 0.0, "student": 0.0}
    sums = {"distill": 0.0, "grpo": 0.0}
    pad = getattr(policy, "pad_token_id", 0) or 0
    optimizer.zero_grad(set_to_none=True)
    # FSDP: weights gathered over the loop, gradients reduce-scattered after it (no-op otherwise)
    for cidx, tok in D.fsdp_micro_batches(model, teacher, micro_batches(layout, config.micro_batch_episodes)):
        t1 = time.perf_counter()
        batch = teacher_scores(model, teacher, episodes, layout, plan, cidx, tok, pad, config)
        t2 = time.perf_counter()
        seconds["teacher"] += t2 - t1
        _student_backward(model, episodes, layout, cidx, pad, batch, plan, config, sums)
        seconds["student"] += time.perf_counter() - t2
    grad_norm = _step(model, optimizer, teacher, config, sums)
    return UpdateStats(stepped=True, loss=plan.w_distill * sums["distill"] + plan.w_grpo * sums["grpo"],
                       distill_loss=sums["distill"] if plan.distill_denom else None,
                       grpo_loss=sums["grpo"] if plan.grpo_denom else None, grad_norm=grad_norm,
                       seconds={**seconds, "update": time.perf_counter() - t0}, **counts)


def distillation_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor, ids: torch.Tensor,
                      behaviour_logp: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The per-token self-distillation loss of sampled action tokens (``[N]``).

    ``student_logp`` / ``teacher_logp``: ``[N, V]`` log-softmaxes of the student (the context the model
    saw) and of the teacher (teacher weights, the note inserted before the action); ``ids``: the sampled
    tokens; ``behaviour_logp``: their log-probs when sampled. With ``config.loss`` a divergence (SDPO: the
    generalised JSD with ``jsd_alpha``, or a KL), it is computed on the ``topk`` tokens of the
    ``topk_source`` plus one tail bucket, times the importance weight ``pi_now / pi_sampled`` truncated at
    ``is_clip``; ``"sampled"`` is the PPO-clipped sampled-token estimator."""
    lp = student_logp.gather(-1, ids[:, None]).squeeze(-1)
    if config.loss == "sampled":
        return L.sampled_token_loss(lp, teacher_logp.gather(-1, ids[:, None]).squeeze(-1), behaviour_logp,
                                    config.clip_eps)
    s_, t_ = (L.topk_with_tail(student_logp, teacher_logp, config.topk, config.topk_source)
              if config.topk is not None else (student_logp, teacher_logp))
    return L.divergence(s_, t_, config.loss, config.jsd_alpha) * L.importance_weights(lp, behaviour_logp,
                                                                                       config.is_clip)


def _whole_batch_counts(layout: TokenLayout, plan: LossPlan) -> dict[str, int]:
    """The batch's token and turn counts (summed over ranks under torch.distributed)."""
    n_tokens, n_spans = (int(x) for x in D.global_counts([layout.num_tokens, len(layout.spans)]))
    return {"action_tokens": n_tokens, "distill_tokens": plan.distill_denom, "grpo_tokens": plan.grpo_denom,
            "scored_turns": plan.scored_turns, "masked_turns": n_spans - plan.scored_turns,
            "tokens_trained": plan.global_tokens_trained}


def teacher_scores(model: Any, teacher: TeacherWeights, episodes: Sequence[Episode], layout: TokenLayout,
                    plan: LossPlan, cidx: list[int], tok: torch.Tensor, pad: int, config: TrainConfig) -> TokenBatch:
    """A micro-batch's action tokens with the teacher's view of them: the teacher's hidden states over the
    note contexts (distillation) and the reference log-probs (GRPO's KL term), both without gradient."""
    t_logits = None
    if bool(plan.distill_mask[tok].any()):   # no teacher pass (nor a dense [N, V] zero table) without a scored turn
        with torch.no_grad(), teacher.active():
            t_logits, _ = teacher_logits_prefix_cache(model, episodes, plan.teacher_contexts, layout,
                                                      chain_indices=cidx, pad_id=pad, as_hidden=True)
    ref_lp = (_reference_logprobs(model, episodes, layout, cidx, pad, layout.action_ids[tok], config)
              if plan.n_grpo and config.kl_coef > 0 else None)
    return TokenBatch(layout.action_ids[tok], layout.behaviour_logprobs[tok], plan.distill_mask[tok],
                       plan.grpo_mask[tok], plan.advantages[tok], t_logits, ref_lp)


def _student_backward(model: Any, episodes: Sequence[Episode], layout: TokenLayout, cidx: list[int], pad: int,
                      batch: TokenBatch, plan: LossPlan, config: TrainConfig, sums: dict[str, float]) -> None:
    """The student's pass over a micro-batch and the backward of its loss, chunk by chunk."""
    with _training_mode(model, config.gradient_checkpointing):
        hidden, head = student_hidden(model, episodes, layout, chain_indices=cidx, pad_id=pad)
        _chunked_backward(hidden, head, lambda sl, z: chunk_loss(sl, z, batch, plan, config, sums),
                          config.loss_chunk_tokens)


def _step(model: Any, optimizer: torch.optim.Optimizer, teacher: TeacherWeights, config: TrainConfig,
          sums: dict[str, float]) -> float:
    """Reduce the gradients (and the loss sums) over ranks, clip, step, and move the EMA teacher."""
    params = [p for p in model.parameters() if p.requires_grad]
    D.all_reduce_gradients(params)
    sums["distill"], sums["grpo"] = D.global_counts([sums["distill"], sums["grpo"]])
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    teacher.update()
    return grad_norm


def episode_finished(ep: Episode) -> bool:
    """Whether the env itself ended the episode: it terminated (success or failure) or the env's own
    per-episode turn cap truncated it. Such an episode has its env reward (a capped WebShop or Tau-bench
    episode scores what the env gives it, usually 0) and enters GRPO like any other. Not finished: an
    episode cut from outside the env - by the context window, an env error or the training budget
    (``metadata["cut_short"]``, set by :mod:`~hero_gym.agents.rollout`)."""
    if ep.metadata.get("cut_short", False):
        return False
    return ep.success or ep.terminated or ep.truncated


@dataclass
class LossPlan:
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


def plan_losses(policy: Any, episodes: Sequence[Episode], notes: Sequence[Sequence[str | None]] | None,
                 layout: TokenLayout, config: TrainConfig) -> LossPlan:
    """Which action tokens of ``episodes`` enter the distillation loss (turns with a note), which enter
    GRPO (episodes the env ended, with their group-normalised advantage), and with what weights; the
    counts are the whole batch's under torch.distributed."""
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
    plan = LossPlan(tctx, distill_mask & (w_distill > 0), grpo_mask, advantages, w_distill, w_grpo, scored)
    totals = D.global_counts([plan.n_distill, plan.n_grpo, plan.tokens_trained, scored])
    plan.distill_denom, plan.grpo_denom, plan.global_tokens_trained, plan.scored_turns = (int(x) for x in totals)
    return plan


@dataclass
class TokenBatch:
    """The action tokens of one micro-batch and what their losses need."""

    ids: torch.Tensor
    behaviour_logprobs: torch.Tensor
    distill_mask: torch.Tensor
    grpo_mask: torch.Tensor
    advantages: torch.Tensor
    teacher_logits: Any
    ref_logprobs: torch.Tensor | None


def chunk_loss(sl: slice, logits: torch.Tensor, b: TokenBatch, plan: LossPlan, config: TrainConfig,
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
        per = distillation_loss(lp_all, F.log_softmax(b.teacher_logits[sl].float(), -1), ids, b_lp, config)
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


def micro_batches(layout: TokenLayout, episodes_per_batch: int) -> Iterator[tuple[list[int], torch.Tensor]]:
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

