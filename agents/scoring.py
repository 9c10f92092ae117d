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
teacher's weights active) first fills a KV cache over the chain's shared prefix with one plain causal
forward (decoder only, stopped once the last layer's keys/values are stored), then encodes each turn's
query ``note_t + gen prompt + action_t`` (minus the action's last token, which predicts nothing scored)
with position ids from ``p_t`` (= the length of the turn's shared prefix) on top of a read-only view of
the cache (:func:`teacher_logits_from_cache`). Consecutive turns are encoded together, up to
``group_tokens`` query tokens per forward: a 4-D mask lets turn ``t`` see cached positions ``[0, p_t)``
and causally its own query only; a group of one turn is plain causal attention over exactly ``p_t``
cached keys. Either way the computation is that of a separate forward over
``teacher_context_t + action_t``, at the cost of the query only.

:func:`teacher_logits_naive` is the per-turn reference (and the benchmark baseline); the paths give
the same logits to float tolerance (``tests/agents/test_scoring.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hero_gym.agents.models import cache_kwargs, output_cache
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


def _teacher_rows(model: Any, parts: tuple[Any, Any] | None, keep: torch.Tensor, **kw: Any) -> torch.Tensor:
    """One no-grad teacher forward: the rows at the True positions of ``keep`` (``[1, L]`` bool), as final
    hidden states when ``parts = (decoder, head)`` is given (projected later), else as logits."""
    if parts is not None:
        return parts[0](**kw).last_hidden_state[keep]
    try:
        logits = model(**kw, logits_to_keep=keep).logits
        return logits if logits.dim() == 2 and logits.shape[0] == int(keep.sum()) else logits[keep]
    except TypeError:  # pragma: no cover - model without logits_to_keep
        return model(**kw).logits[keep]


def _teacher_projection(parts: tuple[Any, Any], hidden_size: int, dtype: torch.dtype, device: Any) -> Any:
    """The teacher's output head, evaluated inside the teacher context (a frozen copy when trainable)."""
    head = parts[1]
    if any(p.requires_grad for p in head.parameters()):
        return _FrozenProjection(head, hidden_size, dtype, device)
    return head


def _scatter_rows(kept: torch.Tensor | HiddenLogits, mask_out: torch.Tensor, n_tokens: int, dev: Any):
    if isinstance(kept, HiddenLogits):
        h = torch.zeros(n_tokens, kept.hidden.shape[-1], dtype=kept.hidden.dtype, device=dev)
        h[mask_out.to(dev)] = kept.hidden
        return HiddenLogits(h, kept.project, kept.shape[1])
    out = torch.zeros(n_tokens, kept.shape[-1], dtype=kept.dtype, device=dev)
    out[mask_out.to(dev)] = kept
    return out


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
        return out.logits, layout, output_cache(out)
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
    """Per turn of a chain: ``(p_t, query_t, action_t)``, ``p_t=None`` for a masked turn.

    ``p_t`` is the length of the turn's teacher context shared with the chain's sequence; ``query_t`` is
    what the teacher must still encode on top of those ``p_t`` cached positions: the rest of the teacher
    context (note message + generation prompt) and the action *without its last token* (that token
    predicts nothing that is scored, and nothing scored attends to it). The last ``len(action_t)``
    positions of ``query_t`` predict the action tokens."""
    plan = []
    for t in ch.turns:
        tctx = tctx_row[t]
        act = list(ep.turns[t].action_token_ids)
        if tctx is None:
            plan.append((None, None, act))
            continue
        p = min(common_prefix_len(tctx, ch.sequence), len(tctx) - 1)
        plan.append((p, list(tctx[p:]) + act[:-1], act))
    return plan


def _prefix_view(layers: Sequence[tuple[torch.Tensor, torch.Tensor]], row: int, length: int) -> Any:
    """A read-only cache of row ``row``'s first ``length`` positions (views of ``layers``, no copy).

    Attention sees ``cat(prefix, new)`` per layer but nothing is stored: the shared prefix cache (possibly
    the student's) is never modified, and no layer keeps a grown copy once its attention is done."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class _ReadOnlyLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):  # noqa: ANN001
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    view = []
    for k, v in layers:
        layer = _ReadOnlyLayer()
        layer.dtype, layer.device = k.dtype, k.device
        layer.keys, layer.values = k[row:row + 1, :, :length], v[row:row + 1, :, :length]
        layer.is_initialized = True
        view.append(layer)
    cache = DynamicCache()
    cache.layers = view
    return cache


class _PrefixCached(Exception):
    """Raised by :func:`_prefix_cache` once the last layer's keys and values are stored."""


def _prefix_cache(module: Any, ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(keys, values)`` per layer of a no-grad causal forward of ``module`` (the decoder) over ``ids``.

    Only the cache is wanted, so the forward stops as soon as the last layer has stored its keys and
    values: that layer's attention, output projection and MLP, the final norm (and any output head) are
    never computed for the prefix. Every layer caches all positions (plain ``DynamicLayer``s), so a query
    may attend to any prefix length."""
    from transformers import DynamicCache

    cfg = getattr(module, "config", None)
    cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    last = getattr(cfg, "num_hidden_layers", 0) - 1

    class _UpToLastLayer(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # noqa: ANN001
            out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
            if layer_idx == last:
                raise _PrefixCached
            return out

    cache = _UpToLastLayer()
    with torch.no_grad():
        try:
            module(input_ids=ids, use_cache=True, **cache_kwargs(module, cache))
        except _PrefixCached:
            pass
    return [(k, v) for k, v, *_ in cache]


QUERY_GROUP_TOKENS = 256
"""Default ``group_tokens`` of the teacher scorers: consecutive scored turns of a chain are encoded together
until their queries hold this many tokens. One query per turn attends to exactly its own keys, but every
forward streams all weights through the matrix products; one query for all turns streams them once but
attends over every turn's keys. A few hundred tokens per forward keeps the products efficient on a CPU
while a group's turns only attend over the prefix of its last turn."""


def _supports_4d_masks(model: Any) -> bool:
    """Custom 4-D attention masks are honoured by the eager and SDPA kernels only (flash-attention kernels
    take padding masks and would silently attend across the turns of a group)."""
    cfg = getattr(model, "config", None)
    return (getattr(cfg, "_attn_implementation", None) or "eager") in ("eager", "sdpa")


def _query_groups(plan: list[tuple], group_tokens: int) -> list[list[tuple]]:
    """Consecutive scored turns ``(p_t, query_t, action_t)`` grouped until a group holds ``group_tokens``
    query tokens (``group_tokens <= 1``: one turn per group)."""
    groups: list[list[tuple]] = []
    cur: list[tuple] = []
    n = 0
    for item in plan:
        if item[0] is None:
            continue
        cur.append(item)
        n += len(item[1])
        if n >= group_tokens:
            groups.append(cur)
            cur, n = [], 0
    if cur:
        groups.append(cur)
    return groups


def _group_forward(model: Any, parts: tuple[Any, Any] | None, group: list[tuple],
                   layers: list[tuple[torch.Tensor, torch.Tensor]], row: int) -> torch.Tensor:
    """Teacher rows of one group of turns, in one no-grad forward on top of the first ``P`` cached positions
    (``P`` = the largest ``p_t`` of the group). A single turn is plain causal attention over its ``p_t``
    cached keys; several turns are concatenated and a 4-D mask lets turn ``t`` see cached positions
    ``[0, p_t)`` and causally its own query only, with position ids from ``p_t``."""
    dev = _model_device(model)
    P = max(p for p, _, _ in group)
    ids: list[int] = []
    pos: list[int] = []
    for p, query, _ in group:
        ids.extend(query)
        pos.extend(range(p, p + len(query)))
    Q = len(ids)
    keep = torch.zeros((1, Q), dtype=torch.bool)
    kw: dict[str, Any] = {"input_ids": torch.tensor([ids], device=dev), "position_ids": torch.tensor([pos], device=dev),
                          "use_cache": True,
                          **cache_kwargs(model if parts is None else parts[0], _prefix_view(layers, row, P))}
    if len(group) > 1:
        allowed = torch.zeros((Q, P + Q), dtype=torch.bool)
        start = 0
        for p, query, _ in group:
            n = len(query)
            allowed[start:start + n, :p] = True
            allowed[start:start + n, P + start:P + start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            start += n
        dtype = layers[0][0].dtype
        kw["attention_mask"] = torch.zeros((1, 1, Q, P + Q), dtype=dtype).masked_fill_(
            ~allowed, torch.finfo(dtype).min).to(dev)
    start = 0
    for _, query, act in group:
        start += len(query)
        keep[0, start - len(act):start] = True
    with torch.no_grad():
        return _teacher_rows(model, parts, keep.to(dev), **kw)


def _turn_queries(model: Any, parts: tuple[Any, Any] | None, ch: Chain, episode: Episode,
                  tctx_row: Sequence[Sequence[int] | None], layers: list[tuple[torch.Tensor, torch.Tensor]] | None,
                  row: int, rows: list[torch.Tensor], mask: list[bool], group_tokens: int) -> None:
    """Append the teacher rows of every scored turn of chain ``ch`` to ``rows`` (turn order) and one mask
    entry per action token to ``mask``: the turns' queries (:func:`_block_plan`) are encoded in groups
    (:func:`_query_groups`, :func:`_group_forward`) on top of row ``row`` of the prefix cache ``layers``."""
    plan = _block_plan(ch, episode, tctx_row)
    for p, _, act in plan:
        mask.extend([p is not None] * len(act))
    groups = _query_groups(plan, group_tokens if _supports_4d_masks(model) else 1)
    if groups and layers is None:
        raise ValueError("a scored turn needs the chain's prefix cache")
    for group in groups:
        rows.append(_group_forward(model, parts, group, layers, row))


def _assemble(model: Any, parts: tuple[Any, Any] | None, rows: list[torch.Tensor],
              mask: list[bool]) -> tuple[torch.Tensor | HiddenLogits, torch.Tensor]:
    """``(logits [N, V] or HiddenLogits, mask [N])`` from the scored rows; masked rows are zero."""
    dev = _model_device(model)
    mask_out = torch.tensor(mask, dtype=torch.bool)
    if not rows:
        V = model.get_output_embeddings().weight.shape[0]
        return torch.zeros(len(mask), V, device=dev), mask_out
    kept: torch.Tensor | HiddenLogits = torch.cat(rows)
    if parts is not None:
        h = kept
        kept = HiddenLogits(h, _teacher_projection(parts, h.shape[-1], h.dtype, h.device), parts[1].weight.shape[0])
    return _scatter_rows(kept, mask_out, len(mask), dev), mask_out


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
    group_tokens: int = QUERY_GROUP_TOKENS,
) -> tuple[torch.Tensor | HiddenLogits, torch.Tensor]:
    """Teacher logits on top of a KV cache whose row ``r`` holds the ``r``-th selected chain from position 0,
    computed with the teacher's weights (live teacher: the student forward's own cache, from
    :func:`student_logits` with ``return_cache=True`` and the same ``chain_indices``).

    The scored turns' note + generation prompt + action queries are encoded with position ids from ``p_t``
    on top of a read-only view of the cache, ``group_tokens`` query tokens of consecutive turns per
    forward (:data:`QUERY_GROUP_TOKENS`; ``1`` = one plain causal forward per turn, which any attention
    kernel supports; larger groups need a 4-D mask, so other kernels than eager and SDPA always get one
    turn per forward). The result is the
    computation of :func:`teacher_logits_naive`. The cache is detached (stop-gradient) and not modified.
    ``pad_id`` is unused (the signature is shared with the other scorers).

    Returns ``(logits [N, V] or HiddenLogits, mask [N])`` over the selected chains' action tokens; rows of
    masked turns are zero and ``mask`` is False there.
    """
    del pad_id
    chains = [layout.chains[i] for i in chain_indices] if chain_indices is not None else layout.chains
    layers = [(k.detach(), v.detach()) for k, v, *_ in cache]
    parts = _plain_head(model) if as_hidden else None
    rows: list[torch.Tensor] = []
    mask: list[bool] = []
    for r, ch in enumerate(chains):
        _turn_queries(model, parts, ch, episodes[ch.episode], teacher_contexts[ch.episode], layers, r, rows, mask,
                      group_tokens)
    return _assemble(model, parts, rows, mask)


def teacher_logits_prefix_cache(
    model: Any,
    episodes: Sequence[Episode],
    teacher_contexts: Sequence[Sequence[Sequence[int] | None]],
    layout: TokenLayout | None = None,
    *,
    chain_indices: Sequence[int] | None = None,
    pad_id: int = 0,
    as_hidden: bool = False,
    group_tokens: int = QUERY_GROUP_TOKENS,
) -> tuple[torch.Tensor | HiddenLogits, torch.Tensor]:
    """Teacher logits by KV-cache prefix reuse with the teacher's own weights (any teacher kind).

    Per chain with a scored turn: (1) one plain causal forward over its shared prefix
    ``sequence[:max_t p_t]`` (unpadded; decoder only, stopped once the last layer's keys/values are cached)
    that fills a KV cache; (2) the scored turns' queries on top of it, ``group_tokens`` query tokens per
    forward (as in :func:`teacher_logits_from_cache`). One prefix cache is alive at a time. Same outputs as
    :func:`teacher_logits_naive`. ``pad_id`` is unused (nothing is padded).
    """
    del pad_id
    layout = layout or build_layout(episodes)
    chains = [layout.chains[i] for i in chain_indices] if chain_indices is not None else layout.chains
    dev = _model_device(model)
    full = _plain_head(model)
    parts = full if as_hidden else None
    rows: list[torch.Tensor] = []
    mask: list[bool] = []
    for ch in chains:
        ep, tctx_row = episodes[ch.episode], teacher_contexts[ch.episode]
        scored = [p for p, _, _ in _block_plan(ch, ep, tctx_row) if p is not None]
        layers = None
        if scored:   # max(1, .): p_t = 0 is possible
            ids = torch.tensor([ch.sequence[:max(1, max(scored))]], dtype=torch.long, device=dev)
            layers = _prefix_cache(model if full is None else full[0], ids)
        _turn_queries(model, parts, ch, ep, tctx_row, layers, 0, rows, mask, group_tokens)
    return _assemble(model, parts, rows, mask)


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
