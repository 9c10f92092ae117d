"""Scoring recorded episodes: student and self-teacher logits at exactly the sampled action tokens.

Only the action tokens an episode recorded (``Turn.action_token_ids``) are scored, in the
contexts the model actually saw (``Turn.context_token_ids``); nothing is re-tokenised.

**Student — one forward pass per episode.** With a prefix-preserving chat template, turn
``t+1``'s context starts with turn ``t``'s context followed by its action, so the last turn's
``context + action`` contains every turn. One causal forward over that sequence yields the
student's logits for every action token of every turn at once (logits are projected only at
those positions). Where the prefix property breaks (e.g. the rollout trimmed an overflowing
context), the episode is split into *chains* of consistent turns, one sequence each.

**Teacher — KV-cache prefix reuse.** Turn ``t``'s teacher context is its context minus the trailing
generation prompt, plus a note message and the generation prompt (``ChatRenderer.note_ids``). All of
them share the episode prefix. :func:`teacher_logits_prefix_cache` (what the trainer runs, with the
teacher's weights active) first fills a KV cache over the shared prefix with a plain causal forward,
then encodes every turn's block ``note_t + gen prompt + action_t`` against it in one short query
(:func:`teacher_logits_from_cache`): block ``t`` gets position ids ``p_t, p_t+1, ...`` (``p_t`` = the
length of its shared prefix) and a 4-D mask lets it see cache positions ``[0, p_t)`` plus its own
earlier tokens only. Causal attention + RoPE then compute exactly what a separate forward over
``teacher_context_t + action_t`` would.

:func:`teacher_logits_naive` is the per-turn reference (and the benchmark baseline); the paths give
the same logits to float tolerance (``tests/agents/test_scoring.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hero_gym.records import Episode

__all__ = [
    "TurnSpan",
    "TokenLayout",
    "prefix_chains",
    "build_layout",
    "student_logits",
    "student_hidden",
    "teacher_logits_naive",
    "teacher_logits_from_cache",
    "teacher_logits_prefix_cache",
    "common_prefix_len",
    "HiddenLogits",
]


@dataclass
class TurnSpan:
    """Where turn ``turn`` of episode ``episode`` sits in the flattened action-token order."""

    episode: int
    turn: int
    start: int
    length: int
    context_len: int   # len(context_token_ids)


@dataclass
class Chain:
    """Consecutive turns of one episode whose contexts extend each other; one sequence."""

    episode: int
    turns: list[int]
    sequence: list[int]   # context of the last turn + its action


@dataclass
class TokenLayout:
    """Flattened action tokens of a batch of episodes (episode-major, then turn order).

    ``action_ids[n]`` is the n-th scored token; ``behaviour_logprobs[n]`` its sampling log-prob
    (NaN when the rollout did not record one); ``episode_of_token[n]`` its episode index.
    """

    spans: list[TurnSpan]
    chains: list[Chain]
    action_ids: torch.Tensor
    behaviour_logprobs: torch.Tensor
    episode_of_token: torch.Tensor
    _by_key: dict[tuple[int, int], TurnSpan] = field(default_factory=dict, repr=False)

    @property
    def num_tokens(self) -> int:
        return int(self.action_ids.numel())

    def span(self, episode: int, turn: int) -> TurnSpan | None:
        return self._by_key.get((episode, turn))

    def token_mask(self, turns: set[tuple[int, int]]) -> torch.Tensor:
        """Bool ``[N]``: True on the tokens of the given ``(episode, turn)`` pairs."""
        m = torch.zeros(self.num_tokens, dtype=torch.bool)
        for s in self.spans:
            if (s.episode, s.turn) in turns:
                m[s.start:s.start + s.length] = True
        return m


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _scorable(turn: Any) -> bool:
    return bool(turn.context_token_ids) and bool(turn.action_token_ids)


def prefix_chains(episode: Episode, episode_index: int = 0) -> list[Chain]:
    """Split an episode's scorable turns into prefix-consistent chains (usually exactly one)."""
    chains: list[Chain] = []
    cur: Chain | None = None
    for t, turn in enumerate(episode.turns):
        if not _scorable(turn):
            continue
        ctx, act = list(turn.context_token_ids), list(turn.action_token_ids)
        if cur is not None and len(ctx) >= len(cur.sequence) and ctx[: len(cur.sequence)] == cur.sequence:
            cur.turns.append(t)
            cur.sequence = ctx + act
        else:
            cur = Chain(episode_index, [t], ctx + act)
            chains.append(cur)
    return chains


def build_layout(episodes: Sequence[Episode]) -> TokenLayout:
    """Index every scorable turn's action tokens (turns without recorded ids are skipped)."""
    spans, chains, ids, lps, eps = [], [], [], [], []
    n = 0
    for i, ep in enumerate(episodes):
        for ch in prefix_chains(ep, i):
            chains.append(ch)
            for t in ch.turns:
                turn = ep.turns[t]
                a = list(turn.action_token_ids)
                spans.append(TurnSpan(i, t, n, len(a), len(turn.context_token_ids)))
                ids.extend(a)
                lp = turn.action_logprobs
                lps.extend(lp if lp is not None and len(lp) == len(a) else [float("nan")] * len(a))
                eps.extend([i] * len(a))
                n += len(a)
    lay = TokenLayout(spans, chains, torch.tensor(ids, dtype=torch.long),
                      torch.tensor(lps, dtype=torch.float32), torch.tensor(eps, dtype=torch.long))
    lay._by_key = {(s.episode, s.turn): s for s in spans}
    return lay


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _neg(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min


def _forward_keep(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor:
    """Logits ``[keep.sum(), V]`` at the True positions of ``keep`` (row-major order).

    Uses ``logits_to_keep`` (a boolean ``[B, L]`` mask: only those hidden states are projected onto
    the vocabulary); falls back to full logits for models that do not accept it.
    """
    kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if position_ids is not None:
        kw["position_ids"] = position_ids
    try:
        out = model(**kw, logits_to_keep=keep)
        logits = out.logits
        if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
            return logits
        return logits[keep]  # pragma: no cover - model ignored a bool logits_to_keep
    except TypeError:  # pragma: no cover - model without logits_to_keep
        return model(**kw).logits[keep]


class HiddenLogits:
    """Logits kept as final hidden states ``[N, H]`` and projected on demand: ``x[sl]`` returns
    ``project(hidden[sl])`` (``[n, V]``). Saves the ``[N, V]`` table for a no-grad teacher; the loss
    projects one chunk at a time."""

    def __init__(self, hidden: torch.Tensor, project: Any, vocab: int):
        self.hidden, self.project = hidden, project
        self.shape = (hidden.shape[0], vocab)

    def __getitem__(self, sl: Any) -> torch.Tensor:
        with torch.no_grad():
            return self.project(self.hidden[sl])

    def dense(self) -> torch.Tensor:
        return self[:]


class _FrozenProjection:
    """A linear output head evaluated once and detached: ``x @ weight_t + bias``. A lazily projected
    teacher must use the head *as it was inside the teacher context* (EMA / base weights); when the
    head itself is trainable (full fine-tuning, a LoRA on the head) the live module would differ."""

    def __init__(self, head: Any, hidden_size: int, dtype: torch.dtype, device: Any):
        with torch.no_grad():
            bias = head(torch.zeros(1, hidden_size, dtype=dtype, device=device))
            self.weight_t = head(torch.eye(hidden_size, dtype=dtype, device=device)) - bias
            self.bias = bias[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_t + self.bias


def _plain_head(model: Any) -> tuple[Any, Any] | None:
    """``(decoder, lm_head)`` when logits are exactly ``lm_head(decoder(...).last_hidden_state)``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None or getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None) \
            or getattr(cfg, "logits_scaling", None):
        return None
    try:
        dec, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if dec is None or head is None:
        return None
    return dec, head


def _forward_teacher(model: Any, as_hidden: bool, keep: torch.Tensor, **kw: Any) -> torch.Tensor | HiddenLogits:
    """No-grad forward returning logits at ``keep`` positions (or lazily projected hidden states)."""
    parts = _plain_head(model) if as_hidden else None
    if parts is None:
        try:
            return model(**kw, logits_to_keep=keep).logits
        except TypeError:  # pragma: no cover
            return model(**kw).logits[keep]
    dec, head = parts
    h = dec(**kw).last_hidden_state[keep]
    vocab = head.weight.shape[0]
    if any(p.requires_grad for p in head.parameters()):
        head = _FrozenProjection(head, h.shape[-1], h.dtype, h.device)
    return HiddenLogits(h, head, vocab)


def _scatter_rows(kept: torch.Tensor | HiddenLogits, mask_out: torch.Tensor, n_tokens: int, dev: Any):
    if isinstance(kept, HiddenLogits):
        h = torch.zeros(n_tokens, kept.hidden.shape[-1], dtype=kept.hidden.dtype, device=dev)
        h[mask_out.to(dev)] = kept.hidden
        return HiddenLogits(h, kept.project, kept.shape[1])
    out = torch.zeros(n_tokens, kept.shape[-1], dtype=kept.dtype, device=dev)
    out[mask_out.to(dev)] = kept
    return out


def _model_dtype(model: Any) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except StopIteration:  # pragma: no cover
        return torch.float32


def _chain_batch(chains: Sequence[Chain], episodes: Sequence[Episode], pad_id: int):
    """Right-padded ``(ids, attention_mask, keep)`` for a batch of chains; ``keep`` marks the positions
    whose logits predict an action token (position ``p`` predicts token ``p+1``)."""
    L = max(len(c.sequence) for c in chains)
    B = len(chains)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    keep = torch.zeros((B, L), dtype=torch.bool)
    for r, ch in enumerate(chains):
        ids[r, : len(ch.sequence)] = torch.tensor(ch.sequence)
        att[r, : len(ch.sequence)] = 1
        ep = episodes[ch.episode]
        for t in ch.turns:
            c = len(ep.turns[t].context_token_ids)
            n = len(ep.turns[t].action_token_ids)
            keep[r, c - 1: c - 1 + n] = True
    return ids, att, keep


def student_logits(
    model: Any,
    episodes: Sequence[Episode],
    layout: TokenLayout | None = None,
    *,
    chain_indices: Sequence[int] | None = None,
    pad_id: int = 0,
    return_cache: bool = False,
) -> tuple[torch.Tensor, TokenLayout] | tuple[torch.Tensor, TokenLayout, Any]:
    """Student logits ``[N, V]`` for every scored action token, one forward over each chain.

    Chains are right-padded into one batch (standard 2-D mask; positions 0..L-1 are correct for
    right padding). Gradients flow (call under ``torch.no_grad`` to score without them).
    ``chain_indices`` restricts to a subset of ``layout.chains`` (micro-batching); the returned
    rows then follow the order of those chains' spans. ``return_cache=True`` also returns the
    forward's KV cache (for :func:`teacher_logits_from_cache`): ``(logits, layout, cache)``.
    """
    layout = layout or build_layout(episodes)
    chains = [layout.chains[i] for i in chain_indices] if chain_indices is not None else layout.chains
    dev = _model_device(model)
    if not chains:
        V = model.get_output_embeddings().weight.shape[0]
        return torch.zeros(0, V, device=dev), layout
    ids, att, keep = (x.to(dev) for x in _chain_batch(chains, episodes, pad_id))
    if return_cache:
        out = model(input_ids=ids, attention_mask=att, use_cache=True, logits_to_keep=keep)
        return out.logits, layout, out.past_key_values
    return _forward_keep(model, ids, att, None, keep), layout


def student_hidden(
    model: Any,
    episodes: Sequence[Episode],
    layout: TokenLayout,
    *,
    chain_indices: Sequence[int] | None = None,
    pad_id: int = 0,
) -> tuple[torch.Tensor, Any]:
    """What the training step differentiates: ``(hidden [N, H], head)`` with ``head(hidden[sl])`` the
    student logits of those action tokens (same rows as :func:`student_logits`). The loss projects
    through ``head`` one chunk of tokens at a time, so no ``[N, V]`` table with gradient ever exists.
    Models whose logits are not a plain linear head of the last hidden state get their logits here
    with an identity ``head``."""
    chains = [layout.chains[i] for i in chain_indices] if chain_indices is not None else layout.chains
    dev = _model_device(model)
    ids, att, keep = (x.to(dev) for x in _chain_batch(chains, episodes, pad_id))
    parts = _plain_head(model)
    if parts is None:   # pragma: no cover - soft-capped / scaled logits
        return _forward_keep(model, ids, att, None, keep), (lambda z: z)
    dec, head = parts
    return dec(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state[keep], head


def _block_plan(ch: Chain, ep: Episode, tctx_row: Sequence[Sequence[int] | None]) -> list[tuple]:
    """Per turn of a chain: ``(p_t, block_t, action)`` with ``p_t=None`` for a masked turn."""
    plan = []
    for t in ch.turns:
        tctx = tctx_row[t]
        act = list(ep.turns[t].action_token_ids)
        if tctx is None:
            plan.append((None, None, act))
            continue
        p = min(common_prefix_len(tctx, ch.sequence), len(tctx) - 1)
        plan.append((p, list(tctx[p:]) + act, act))
    return plan


def _frozen_cache(cache: Any) -> Any:
    """A read-only, detached view of a KV cache: attention sees ``cat(prefix, new)`` per layer, but
    nothing is stored, so no layer keeps a grown copy and the student's cache is untouched."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class _FrozenLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):  # noqa: ANN001
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    try:
        layers = []
        for k, v, *_ in cache:
            layer = _FrozenLayer()
            layer.dtype, layer.device = k.dtype, k.device
            layer.keys, layer.values = k.detach(), v.detach()
            layer.is_initialized = True
            layers.append(layer)
        frozen = DynamicCache()
        frozen.layers = layers
        return frozen
    except Exception:  # pragma: no cover - a transformers version with another cache layout
        return DynamicCache(ddp_cache_data=[(k.detach(), v.detach()) for k, v, *_ in cache])


def _require_4d_mask_support(model: Any) -> None:
    """Custom 4-D attention masks are honoured by the eager and SDPA kernels only (flash-attention
    kernels take padding masks and would silently attend across note blocks)."""
    cfg = getattr(model, "config", None)
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        raise ValueError(f"teacher scoring needs attn_implementation 'eager' or 'sdpa' (4-D masks), got {impl!r}")


def _masked_teacher_forward(model: Any, as_hidden: bool, allowed: torch.Tensor, keep: torch.Tensor,
                            ids: torch.Tensor, pos: torch.Tensor, dtype: torch.dtype, dev: Any,
                            past: Any = None) -> Any:
    """One no-grad teacher forward with an explicit boolean attention pattern ``allowed``
    (``[B, Q, K]``, turned into an additive 4-D mask), optionally on top of a KV cache ``past``;
    returns the rows selected by ``keep``."""
    _require_4d_mask_support(model)
    mask4d = torch.zeros((allowed.shape[0], 1, *allowed.shape[1:]), dtype=dtype)
    mask4d.masked_fill_(~allowed[:, None], _neg(dtype))
    extra = {"past_key_values": past, "use_cache": True} if past is not None else {"use_cache": False}
    with torch.no_grad():
        return _forward_teacher(model, as_hidden, keep.to(dev), input_ids=ids.to(dev),
                                attention_mask=mask4d.to(dev), position_ids=pos.to(dev), **extra)


def teacher_logits_from_cache(
    model: Any,
    episodes: Sequence[Episode],
    teacher_contexts: Sequence[Sequence[Sequence[int] | None]],
    layout: TokenLayout,
    cache: Any,
    *,
    chain_indices: Sequence[int] | None = None,
    pad_id: int = 0,
    as_hidden: bool = False,
) -> tuple[torch.Tensor | HiddenLogits, torch.Tensor]:
    """Teacher logits reusing the student forward's KV cache as the shared prefix (live teacher only).

    ``cache`` must come from :func:`student_logits` (``return_cache=True``) with the same
    ``chain_indices``, computed with the teacher's weights (i.e. the live teacher = current student).
    Only the note + generation prompt + action blocks are encoded: block ``t`` attends to cache
    positions ``[0, p_t)`` and causally to itself, with position ids from ``p_t``. The cache is
    detached first (stop-gradient) and not modified. Same outputs as :func:`teacher_logits_naive`.
    """
    chains = [layout.chains[i] for i in chain_indices] if chain_indices is not None else layout.chains
    dev = _model_device(model)
    dtype = _model_dtype(model)
    past = _frozen_cache(cache)
    past_len = past.get_seq_length()
    rows = []
    for ch in chains:
        ids, pos, spans, keep_idx, tok_mask = [], [], [], [], []
        for p, block, act in _block_plan(ch, episodes[ch.episode], teacher_contexts[ch.episode]):
            if p is None:
                tok_mask.extend([False] * len(act))
                continue
            start = len(ids)
            ids.extend(block)
            pos.extend(range(p, p + len(block)))
            spans.append((start, p, len(block)))
            first = start + len(block) - len(act) - 1
            keep_idx.extend(range(first, first + len(act)))
            tok_mask.extend([True] * len(act))
        rows.append((ids, pos, spans, keep_idx, tok_mask))
    n_tokens = sum(len(r[4]) for r in rows)
    mask_out = torch.tensor([m for r in rows for m in r[4]], dtype=torch.bool)
    Q = max((len(r[0]) for r in rows), default=0)
    if Q == 0:
        V = model.get_output_embeddings().weight.shape[0]
        return torch.zeros(n_tokens, V, device=dev), mask_out
    B = len(rows)
    ids_t = torch.full((B, Q), pad_id, dtype=torch.long)
    pos_t = torch.zeros((B, Q), dtype=torch.long)
    allowed = torch.zeros((B, Q, past_len + Q), dtype=torch.bool)
    keep = torch.zeros((B, Q), dtype=torch.bool)
    causal = torch.ones(Q, Q, dtype=torch.bool).tril()
    for r, (ids, pos, spans, keep_idx, _) in enumerate(rows):
        n = len(ids)
        if n:
            ids_t[r, :n] = torch.tensor(ids, dtype=torch.long)
            pos_t[r, :n] = torch.tensor(pos, dtype=torch.long)
        for start, p, blen in spans:
            allowed[r, start:start + blen, :p] = True
            allowed[r, start:start + blen, past_len + start:past_len + start + blen] = causal[:blen, :blen]
        for k in range(n, Q):
            allowed[r, k, past_len + k] = True
        keep[r, keep_idx] = True
    kept = _masked_teacher_forward(model, as_hidden, allowed, keep, ids_t, pos_t, dtype, dev, past=past)
    return _scatter_rows(kept, mask_out, n_tokens, dev), mask_out


def teacher_logits_prefix_cache(
    model: Any,
    episodes: Sequence[Episode],
    teacher_contexts: Sequence[Sequence[Sequence[int] | None]],
    layout: TokenLayout | None = None,
    *,
    chain_indices: Sequence[int] | None = None,
    pad_id: int = 0,
    as_hidden: bool = False,
) -> tuple[torch.Tensor | HiddenLogits, torch.Tensor]:
    """Teacher logits by KV-cache prefix reuse with the teacher's own weights (any teacher kind).

    Two passes per batch of chains: (1) a plain causal forward over each chain's shared prefix
    (``sequence[:max_t p_t]``) that only fills the KV cache (no logits); (2)
    :func:`teacher_logits_from_cache` encodes the note + action blocks against it. Same outputs as
    :func:`teacher_logits_naive`; the prefix uses the ordinary causal attention kernel and the blocks
    attend with a short query.
    """
    layout = layout or build_layout(episodes)
    idx = list(chain_indices) if chain_indices is not None else list(range(len(layout.chains)))
    chains = [layout.chains[i] for i in idx]
    dev = _model_device(model)
    plens = []
    for ch in chains:
        plan = _block_plan(ch, episodes[ch.episode], teacher_contexts[ch.episode])
        plens.append(max([p for p, _, _ in plan if p is not None], default=1))
    P = max(plens, default=1)
    ids = torch.full((len(chains), P), pad_id, dtype=torch.long)
    att = torch.zeros((len(chains), P), dtype=torch.long)
    for r, (ch, n) in enumerate(zip(chains, plens)):
        ids[r, :n] = torch.tensor(ch.sequence[:n], dtype=torch.long)
        att[r, :n] = 1
    parts = _plain_head(model)
    with torch.no_grad():
        if parts is not None:
            cache = parts[0](input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=True).past_key_values
        else:  # pragma: no cover
            cache = model(input_ids=ids.to(dev), attention_mask=att.to(dev), use_cache=True,
                          logits_to_keep=1).past_key_values
    return teacher_logits_from_cache(model, episodes, teacher_contexts, layout, cache, chain_indices=idx,
                                     pad_id=pad_id, as_hidden=as_hidden)


def teacher_logits_naive(
    model: Any,
    episodes: Sequence[Episode],
    teacher_contexts: Sequence[Sequence[Sequence[int] | None]],
    layout: TokenLayout | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation: one separate forward over ``teacher_context + action`` per turn.

    Costs ``sum_t (|context_t| + |note_t| + |action_t|)``.
    """
    layout = layout or build_layout(episodes)
    dev = _model_device(model)
    V = model.get_output_embeddings().weight.shape[0]
    out = torch.zeros(layout.num_tokens, V, device=dev)
    mask = torch.zeros(layout.num_tokens, dtype=torch.bool)
    with torch.no_grad():
        for s in layout.spans:
            tctx = teacher_contexts[s.episode][s.turn]
            if tctx is None:
                continue
            act = list(episodes[s.episode].turns[s.turn].action_token_ids)
            seq = torch.tensor([list(tctx) + act], device=dev)
            logits = model(input_ids=seq, use_cache=False).logits[0]
            out[s.start:s.start + s.length] = logits[len(tctx) - 1: len(tctx) - 1 + len(act)]
            mask[s.start:s.start + s.length] = True
    return out, mask
