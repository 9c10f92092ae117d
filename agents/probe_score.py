"""Forward-pass scoring for the mechanism probe: log p(action | context + note) for several actions at once.

The trainer's teacher scorer (:mod:`hero_gym.agents.scoring`) scores the *sampled* action of every turn
under one note. The probe needs more per turn: the sampled action ``a_t`` and the oracle's ``a*_t``, under
every method's note and without one. :class:`EpisodeScorer` reuses the trainer's KV-cache scheme: the
episode's shared prefix is encoded once (``scoring._prefix_cache``: a causal forward that stops once the
last layer's keys and values are stored) and every (turn, note) query is encoded on top of a read-only
view of it (``scoring._prefix_view``). On top of that, the actions of one query share its note: the query
is a small tree, ``note_t + gen prompt`` followed by one branch per action, and a 4-D mask lets each
branch see the cached prefix ``[0, p_t)``, the note, and causally itself only (position ids continue from
the note in every branch). Many turns' trees are packed into one forward (``group_tokens``). The result is
that of a separate causal forward over ``teacher_context_t + action`` per (turn, note, action), checked
against exactly that in ``tests/agents/test_probe.py``.

:meth:`EpisodeScorer.score_tree` (the probe's default) goes one step further: the queries of *all* rows of a
turn become one token trie on one cache length, so what rows share (role tokens, the HERO header and
diagnosis, repeated notes) is encoded once (23% fewer query tokens on WebShop), with the same result
(``tests/agents/test_probe_speed.py``).

Teacher context = ``ChatRenderer.note_ids(context_t, note)``, the trainer's renderer (no note: the turn's
own context, i.e. the student's view).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from hero_gym.agents.models import cache_kwargs
from hero_gym.agents.scoring import _plain_head, _prefix_cache, _prefix_view, common_prefix_len, prefix_chains
from hero_gym.records import Episode

__all__ = ["Query", "Scored", "EpisodeScorer"]


@dataclass
class Query:
    """Score ``actions`` (token ids, each as the model would emit it) after ``context`` (ids ending with the
    generation prompt: a turn's context, or its teacher context with a note) at turn ``turn``."""

    turn: int
    context: list[int]
    actions: list[list[int]]
    keep_dist: bool = False   # also return the full log-prob rows of action 0 (for the distillation signal)


@dataclass
class Scored:
    """Per action of a :class:`Query`: the log-prob of each of its tokens; ``dist``: ``[len(actions[0]), V]``
    log-probs at action 0's positions when asked for."""

    token_logprobs: list[torch.Tensor]
    dist: torch.Tensor | None = None

    @property
    def sums(self) -> list[float]:
        return [float(x.sum()) for x in self.token_logprobs]


class EpisodeScorer:
    """Scores :class:`Query` lists against one episode's recorded contexts, encoding its prefix once."""

    def __init__(self, model: Any, episode: Episode, *, group_tokens: int = 384):
        self.model, self.episode, self.group_tokens = model, episode, group_tokens
        parts = _plain_head(model)
        if parts is None:
            raise ValueError("the probe's scorer needs a model whose logits are a linear head of the last hidden "
                             "state (decoder + lm_head)")
        self.decoder, self.head = parts
        self.device = next(model.parameters()).device
        self.chains = prefix_chains(episode)
        self._chain_of = {t: i for i, ch in enumerate(self.chains) for t in ch.turns}
        self._layers: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _cache(self, ci: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if ci not in self._layers:
            seq = self.chains[ci].sequence
            ids = torch.tensor([seq[:max(1, len(seq) - 1)]], dtype=torch.long, device=self.device)
            self._layers[ci] = _prefix_cache(self.decoder, ids)
        return self._layers[ci]

    def _chain(self, q: Query) -> int:
        """The prefix chain ``q``'s turn belongs to (a clear error for a query that cannot be scored)."""
        if q.turn not in self._chain_of:
            raise ValueError(f"turn {q.turn} has no recorded context ids")
        if not q.actions or any(not a for a in q.actions):
            raise ValueError("every query needs at least one non-empty action")
        return self._chain_of[q.turn]

    def _hidden(self, ids: list[int], pos: list[int], allowed: torch.Tensor,
                layers: list[tuple[torch.Tensor, torch.Tensor]], P: int) -> torch.Tensor:
        """Last hidden states ``[len(ids), H]`` of ``ids`` at ``pos`` on top of the cached prefix ``[0, P)``, each
        query token attending where ``allowed`` (``[len(ids), P + len(ids)]``: cached keys, then the new ones)."""
        dtype = layers[0][0].dtype
        mask = torch.zeros((1, 1, *allowed.shape), dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        kw = {"input_ids": torch.tensor([ids], device=self.device),
              "position_ids": torch.tensor([pos], device=self.device), "attention_mask": mask.to(self.device),
              "use_cache": True, **cache_kwargs(self.decoder, _prefix_view(layers, 0, P))}
        with torch.no_grad():
            return self.decoder(**kw).last_hidden_state[0]

    def score(self, queries: Sequence[Query]) -> list[Scored]:
        """One :class:`Scored` per query (same order)."""
        out: list[Scored | None] = [None] * len(queries)
        by_chain: dict[int, list[int]] = {}
        for i, q in enumerate(queries):
            by_chain.setdefault(self._chain(q), []).append(i)
        for ci, idx in by_chain.items():
            seq = self.chains[ci].sequence
            layers = self._cache(ci)
            group: list[tuple[int, int, list[int]]] = []   # (query index, p, note part)
            n = 0
            for i in idx:
                ctx = queries[i].context
                p = min(common_prefix_len(ctx, seq), len(ctx) - 1, layers[0][0].shape[2])
                part = list(ctx[p:])
                group.append((i, p, part))
                n += len(part) + sum(len(a) - 1 for a in queries[i].actions)
                if n >= self.group_tokens:
                    self._forward(queries, group, layers, out)
                    group, n = [], 0
            if group:
                self._forward(queries, group, layers, out)
        return out  # type: ignore[return-value]

    def _forward(self, queries: Sequence[Query], group: list[tuple[int, int, list[int]]],
                 layers: list[tuple[torch.Tensor, torch.Tensor]], out: list[Scored | None]) -> None:
        P = max(p for _, p, _ in group)
        ids: list[int] = []
        pos: list[int] = []
        blocks = []   # per query: (start of note part, note len, [(branch start, branch len)], p)
        for i, p, part in group:
            start = len(ids)
            ids.extend(part)
            pos.extend(range(p, p + len(part)))
            branches = []
            for a in queries[i].actions:
                b = a[:-1]
                branches.append((len(ids), len(b)))
                ids.extend(b)
                pos.extend(range(p + len(part), p + len(part) + len(b)))
            blocks.append((start, len(part), branches, p))
        Q = len(ids)
        allowed = torch.zeros((Q, P + Q), dtype=torch.bool)
        for start, n, branches, p in blocks:
            allowed[start:start + n, :p] = True
            allowed[start:start + n, P + start:P + start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            for bs, bn in branches:
                allowed[bs:bs + bn, :p] = True
                allowed[bs:bs + bn, P + start:P + start + n] = True
                allowed[bs:bs + bn, P + bs:P + bs + bn] = torch.ones(bn, bn, dtype=torch.bool).tril()
        hidden = self._hidden(ids, pos, allowed, layers, P)
        with torch.no_grad():
            for (i, _, _), (start, n, branches, _) in zip(group, blocks):
                q = queries[i]
                toks, dist = [], None
                for k, (a, (bs, bn)) in enumerate(zip(q.actions, branches)):
                    rows = [start + n - 1] + list(range(bs, bs + bn))   # the positions predicting a's tokens
                    lp = F.log_softmax(self.head(hidden[rows]).float(), -1)
                    target = torch.tensor(a, device=lp.device)
                    toks.append(lp.gather(-1, target[:, None]).squeeze(-1).cpu())
                    if k == 0 and q.keep_dist:
                        dist = lp
                out[i] = Scored(toks, dist)

    # ------------------------------------------------------------------ the shared-tree path

    def score_tree(self, queries: Sequence[Query]) -> list[Scored]:
        """Same result as :meth:`score` (up to float rounding), with less compute: all queries of one turn are
        encoded on top of one cache length ``p_t`` (the shortest prefix any of them shares with the chain), as
        one token trie: a token sequence that several queries (or a query's actions) share - the note
        message's role tokens, the HERO header and diagnosis common to several rows, a whole note repeated by
        two rows - is encoded once, and every trie node attends to cached positions ``[0, p_t)``, its
        ancestors and itself (position id ``p_t + depth``). Consecutive turns' tries of one chain are packed
        into one forward until it holds ``group_tokens`` nodes (a single turn's trie is split at query
        boundaries once it would exceed that, keeping attention over masked-out keys small). The log-prob rows
        of every scored position are projected by the head in one product."""
        out: list[Scored | None] = [None] * len(queries)
        by_chain: dict[int, dict[int, list[int]]] = {}
        for i, q in enumerate(queries):
            by_chain.setdefault(self._chain(q), {}).setdefault(q.turn, []).append(i)
        for ci, turns in by_chain.items():
            seq = self.chains[ci].sequence
            layers = self._cache(ci)
            tree = _Tree()
            for t in sorted(turns):
                idx = turns[t]
                p = min(min(common_prefix_len(queries[i].context, seq), len(queries[i].context) - 1)
                        for i in idx)
                p = min(p, layers[0][0].shape[2])
                for i in idx:
                    q = queries[i]
                    part = list(q.context[p:])
                    seqs = [part + a[:-1] for a in q.actions]
                    if len(tree) and len(tree) + tree.cost(t, seqs) > self.group_tokens:
                        self._tree_forward(queries, tree, layers, out)
                        tree = _Tree()
                    tree.add(i, t, p, len(part), seqs)
            if len(tree):
                self._tree_forward(queries, tree, layers, out)
        return out  # type: ignore[return-value]

    def _tree_forward(self, queries: Sequence[Query], tree: _Tree, layers: list[tuple[torch.Tensor, torch.Tensor]],
                      out: list[Scored | None]) -> None:
        P, Q = max(tree.limit), len(tree)
        allowed = torch.zeros((Q, P + Q), dtype=torch.bool)
        for n, (lim, par) in enumerate(zip(tree.limit, tree.parent)):
            allowed[n, :lim] = True
            if par >= 0:
                allowed[n, P:P + n] = allowed[par, P:P + n]
            allowed[n, P + n] = True
        rows: list[int] = []
        for i, part_len, paths in tree.queries:
            for a, path in zip(queries[i].actions, paths):
                rows.extend(path[part_len - 1:part_len - 1 + len(a)])   # the nodes predicting a's tokens
        hidden = self._hidden(tree.ids, tree.pos, allowed, layers, P)
        with torch.no_grad():
            lp = F.log_softmax(self.head(hidden[rows]).float(), -1)
        at = 0
        for i, _, _ in tree.queries:
            q = queries[i]
            toks, dist = [], None
            for k, a in enumerate(q.actions):
                block = lp[at:at + len(a)]
                at += len(a)
                toks.append(block.gather(-1, torch.tensor(a, device=block.device)[:, None]).squeeze(-1).cpu())
                if k == 0 and q.keep_dist:
                    dist = block
            out[i] = Scored(toks, dist)


class _Tree:
    """A token trie of one forward: per turn ``t`` (visible cache ``[0, p_t)``), the sequences ``part + a[:-1]``
    of its queries. Nodes are numbered in creation order, so a node's parent has a lower number."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.pos: list[int] = []
        self.parent: list[int] = []
        self.limit: list[int] = []
        self.queries: list[tuple[int, int, list[list[int]]]] = []   # (query index, part length, node path per action)
        self._kids: dict[tuple[int, int, int], int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def cost(self, turn: int, seqs: Sequence[Sequence[int]]) -> int:
        """How many nodes adding ``seqs`` at ``turn`` would create (linear in their length)."""
        fresh: dict[tuple[int, int], int] = {}   # nodes the walk would create, numbered -2, -3, ...
        for s in seqs:
            cur = -1
            for tok in s:
                nxt = self._kids.get((turn, cur, tok)) if cur >= -1 else None
                if nxt is None:
                    nxt = fresh.setdefault((cur, tok), -2 - len(fresh))
                cur = nxt
        return len(fresh)

    def add(self, query: int, turn: int, p: int, part_len: int, seqs: Sequence[Sequence[int]]) -> None:
        paths = []
        for s in seqs:
            cur, path = -1, []
            for tok in s:
                key = (turn, cur, tok)
                nxt = self._kids.get(key)
                if nxt is None:
                    nxt = len(self.ids)
                    self._kids[key] = nxt
                    self.ids.append(tok)
                    self.pos.append(p if cur < 0 else self.pos[cur] + 1)
                    self.parent.append(cur)
                    self.limit.append(p)
                cur = nxt
                path.append(cur)
            paths.append(path)
        self.queries.append((query, part_len, paths))


# ============================================================================ per-turn records


def _signal(base: torch.Tensor, teacher: torch.Tensor) -> float:
    """The trainer's default distillation loss per token, averaged over the turn's sampled tokens:
    JSD(0.5) on the student's top-100 tokens + a tail bucket (importance weights are 1 at step 0)."""
    from .losses import divergence, topk_with_tail

    s, t = topk_with_tail(base, teacher, 100, "student")
    return float(divergence(s, t, "jsd", 0.5).mean())


def _model_verdict(refl: Any, action_norm: str | None, parser: str) -> tuple[str | None, str | None]:
    """``(verdict, normalised target)`` of a reflection: its own ``verdict`` when set, else ``error`` when it
    proposes a target that differs from the student's action, ``good`` when the target is that action."""
    from .probe import normalise_action

    if refl is None:
        return None, None
    tgt = normalise_action(refl.next_action_target, parser) if refl.next_action_target else None
    verdict = getattr(refl, "verdict", None)
    if verdict is None and tgt is not None:
        verdict = "error" if tgt != action_norm else "good"
    return verdict, tgt


def turn_records(model: Any, renderer: Any, episodes: Sequence[Episode], notes: dict[str, list[list[str | None]]],
                 oracle_texts: Sequence[Sequence[str | None]], parser: str, rule_reflections: Sequence[Any],
                 model_reflections: dict[int, Any], *, group_tokens: int = 384, tree: bool = True,
                 workers: int = 1, log: Any = None) -> list[dict[str, Any]]:
    """One record per scorable turn: its kind, the actions, the reflectors' verdicts and, per note row, the
    log-probs of ``a_t`` / ``a*_t`` with the note, their Δ against no note (summed and per token), the
    distillation signal and whether the note quotes the student's argument (``None`` = the row masks it).

    ``tree=True`` scores every query of a turn (no note and each row's note) in one token trie
    (:meth:`EpisodeScorer.score_tree`); ``tree=False`` is the reference path, one :meth:`EpisodeScorer.score`
    call per row. Both give the same records up to float rounding (``tests/agents/test_probe_speed.py``).

    ``workers > 1`` scores episodes in that many threads, each running torch on one intra-op thread (episodes
    are independent; the records keep the episode order and are the same as with one worker). On a CPU this
    keeps every core busy for the whole pass, where one process's intra-op threads idle in the small
    operations between matrix products; the caller's thread count is restored afterwards."""
    prepared = [_prepare(i, ep, renderer, notes, oracle_texts, parser, rule_reflections, model_reflections)
                for i, ep in enumerate(episodes)]   # tokenising stays on this thread (a tokenizer is not shared)
    workers = max(1, min(workers, len(episodes)))
    done = [0]

    def one(i: int) -> list[dict[str, Any]]:
        recs = _score_episode(model, episodes[i], *prepared[i], notes, i, group_tokens, tree)
        done[0] += 1
        if log is not None:
            log(f"probe: scored episode {i + 1}/{len(episodes)} ({done[0]} done)")
        return recs

    if workers == 1:
        return [r for i in range(len(episodes)) for r in one(i)]
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            per_episode = list(pool.map(one, range(len(episodes))))
    finally:
        torch.set_num_threads(threads)
    return [r for recs in per_episode for r in recs]


def _prepare(i: int, ep: Episode, renderer: Any, notes: dict[str, list[list[str | None]]],
             oracle_texts: Sequence[Sequence[str | None]], parser: str, rule_reflections: Sequence[Any],
             model_reflections: dict[int, Any]) -> tuple[list[int], dict[int, dict[str, Any]],
                                                        dict[int, list[tuple[str, Query]]]]:
    """Episode ``i``'s scorable turns, their records before scoring, and per turn its queries: ``("", no note)``
    then ``(row, teacher context with that row's note)`` for every row that has a note there."""
    from .probe import normalise_action, turn_kind

    eot = renderer.end_of_turn_id
    todo = [t for t, turn in enumerate(ep.turns) if turn.context_token_ids and turn.action_token_ids]
    seen: set[str] = set()
    recs: dict[int, dict[str, Any]] = {}
    acts: dict[int, list[list[int]]] = {}
    for t in todo:
        turn = ep.turns[t]
        a_norm = normalise_action(turn.parsed_action if turn.parsed_action else turn.action_text, parser)
        o_text = oracle_texts[i][t] if oracle_texts else None
        o_norm = normalise_action(o_text, parser)
        key = a_norm if a_norm != "<malformed>" else "raw:" + " ".join(turn.action_text.split()).lower()
        first = key not in seen
        seen.add(key)
        acts[t] = [list(turn.action_token_ids)] + ([renderer.encode(o_text) + [eot]] if o_text else [])
        rv, rt = _model_verdict(rule_reflections[i].get(t), a_norm, parser)
        mv, mt = _model_verdict(model_reflections[i].get(t), a_norm, parser) if i in model_reflections \
            else (None, None)
        recs[t] = {"episode": i, "episode_id": ep.episode_id, "task_id": ep.task_id, "turn": t,
                   "kind": turn_kind(turn.action_error, a_norm, o_norm), "first": first,
                   "action": a_norm, "oracle": o_norm, "action_text": turn.action_text, "oracle_text": o_text,
                   "observation": turn.observation, "n_action_tokens": len(acts[t][0]),
                   "n_oracle_tokens": len(acts[t][1]) if o_text else 0,
                   "rule_verdict": rv, "rule_target": rt, "model_reflected": i in model_reflections,
                   "model_verdict": mv, "model_target": mt, "rows": {}}
    queries: dict[int, list[tuple[str, Query]]] = {}   # per turn: ("", base query) then (row, query)
    for t in todo:
        queries[t] = [("", Query(t, list(ep.turns[t].context_token_ids), acts[t], keep_dist=True))]
        for row, row_notes in notes.items():
            recs[t]["rows"][row] = None
            note = row_notes[i][t]
            if note is None:
                continue
            try:
                tctx = renderer.note_ids(ep.turns[t].context_token_ids, note)
            except ValueError:
                continue
            queries[t].append((row, Query(t, tctx, acts[t], keep_dist=True)))
    return todo, recs, queries


def _score_episode(model: Any, ep: Episode, todo: list[int], recs: dict[int, dict[str, Any]],
                   queries: dict[int, list[tuple[str, Query]]], notes: dict[str, list[list[str | None]]], i: int,
                   group_tokens: int, tree: bool) -> list[dict[str, Any]]:
    """Score episode ``i``'s queries (prepared by :func:`_prepare`) and fill its records' rows."""
    from .probe import _argument_text

    if not todo:
        return []
    scorer = EpisodeScorer(model, ep, group_tokens=group_tokens)

    def fill(t: int, row: str, sc: Scored, b: Scored) -> None:
        arg = _argument_text(recs[t]["action"])
        n_a, n_o = recs[t]["n_action_tokens"], recs[t]["n_oracle_tokens"]
        d_a = sc.sums[0] - b.sums[0]
        d_o = (sc.sums[1] - b.sums[1]) if len(sc.sums) > 1 else None
        recs[t]["rows"][row] = {
            "lp_action": sc.sums[0], "lp_oracle": sc.sums[1] if len(sc.sums) > 1 else None,
            "d_action": d_a, "d_oracle": d_o, "d_action_tok": d_a / n_a,
            "d_oracle_tok": d_o / n_o if d_o is not None and n_o else None,
            "signal": _signal(b.dist, sc.dist),
            "quotes": bool(arg) and arg.lower() in notes[row][i][t].lower()}

    def base_of(t: int, b: Scored) -> None:
        recs[t]["base_lp_action"] = b.sums[0]
        recs[t]["base_lp_oracle"] = b.sums[1] if len(b.sums) > 1 else None

    if tree:   # chunks of consecutive turns, each chunk one score_tree call (its distributions then dropped)
        chunk: list[int] = []
        size = 0
        for k, t in enumerate(todo):
            chunk.append(t)
            size += sum(len(q.context) - len(ep.turns[t].context_token_ids) + sum(map(len, q.actions))
                        for _, q in queries[t])
            if size < group_tokens and k + 1 < len(todo):
                continue
            flat = [(t2, row, q) for t2 in chunk for row, q in queries[t2]]
            scored = scorer.score_tree([q for _, _, q in flat])
            b_of = {t2: sc for (t2, row, _), sc in zip(flat, scored) if row == ""}
            for (t2, row, _), sc in zip(flat, scored):
                if row:
                    fill(t2, row, sc, b_of[t2])
                else:
                    base_of(t2, sc)
            chunk, size = [], 0
    else:      # the reference path: one score() call per row, each packing that row's queries of all turns
        base = scorer.score([queries[t][0][1] for t in todo])
        b_of = dict(zip(todo, base))
        for t in todo:
            base_of(t, b_of[t])
        for row in notes:
            where = [(t, q) for t in todo for r, q in queries[t] if r == row]
            for (t, _), sc in zip(where, scorer.score([q for _, q in where])):
                fill(t, row, sc, b_of[t])
    return [recs[t] for t in todo]
