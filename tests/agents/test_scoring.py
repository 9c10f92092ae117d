"""Prefix-cache teacher scoring and one-pass student scoring equal naive per-turn re-encoding."""
import random

import pytest
import torch

from hero_gym.agents.scoring import (
    build_layout,
    prefix_chains,
    student_logits,
    teacher_logits_naive,
    teacher_logits_prefix_cache,
)
from hero_gym.records import Episode, Turn

GEN = [7, 8, 9]   # "generation prompt"


def tiny(attn="eager", seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      attn_implementation=attn)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def make_episode(rng, n_turns=5, break_at=None, act_len=None):
    ctx = [rng.randrange(10, 100) for _ in range(15)] + GEN
    turns = []
    for t in range(n_turns):
        act = [rng.randrange(10, 100) for _ in range(act_len or rng.randrange(1, 6))]
        turns.append(Turn(index=t, action_text="a", observation="o", context_token_ids=list(ctx),
                          action_token_ids=act, action_logprobs=[-1.0] * len(act)))
        obs = [rng.randrange(10, 100) for _ in range(rng.randrange(2, 8))]
        ctx = ctx + act + obs + GEN
        if break_at is not None and t + 1 == break_at:
            ctx = ctx[:5] + ctx[12:]   # an overflow trim: the next context no longer extends this one
    return Episode(env_id="x", initial_observation="q", turns=turns)


def teacher_ctx(rng, ep, masked=()):
    out = []
    for t, turn in enumerate(ep.turns):
        if t in masked:
            out.append(None)
        else:
            note = [rng.randrange(10, 100) for _ in range(rng.randrange(1, 9))]
            out.append(turn.context_token_ids[: -len(GEN)] + note + GEN)
    return out


@pytest.mark.parametrize("group_tokens", [1, 12, 10**6])   # one turn per forward, a few, all of a chain
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefix_cache_teacher_matches_naive(attn, group_tokens):
    rng = random.Random(0)
    model = tiny(attn)
    eps = [make_episode(rng, 6), make_episode(rng, 4, break_at=2), make_episode(rng, 1)]
    tctx = [teacher_ctx(rng, eps[0], masked={2}), teacher_ctx(rng, eps[1]), teacher_ctx(rng, eps[2])]
    lay = build_layout(eps)
    assert [len(prefix_chains(e)) for e in eps] == [1, 2, 1]
    packed, m1 = teacher_logits_prefix_cache(model, eps, tctx, lay, group_tokens=group_tokens)
    naive, m2 = teacher_logits_naive(model, eps, tctx, lay)
    assert torch.equal(m1, m2) and m1.sum() < lay.num_tokens
    torch.testing.assert_close(packed, naive, atol=2e-5, rtol=1e-4)
    # micro-batching over chains gives the same rows
    part, _ = teacher_logits_prefix_cache(model, eps, tctx, lay, chain_indices=[1, 2, 3], group_tokens=group_tokens)
    n0 = sum(s.length for s in lay.spans if s.episode == 0)
    torch.testing.assert_close(part, packed[n0:], atol=2e-5, rtol=1e-4)


def test_student_one_pass_matches_per_turn():
    rng = random.Random(1)
    model = tiny()
    eps = [make_episode(rng, 5), make_episode(rng, 3, break_at=1)]
    logits, lay = student_logits(model, eps)
    assert logits.shape == (lay.num_tokens, 101) and logits.requires_grad
    for s in lay.spans:
        turn = eps[s.episode].turns[s.turn]
        seq = torch.tensor([turn.context_token_ids + turn.action_token_ids])
        ref = model(input_ids=seq).logits[0, s.context_len - 1: s.context_len - 1 + s.length]
        torch.testing.assert_close(logits[s.start:s.start + s.length], ref, atol=2e-5, rtol=1e-4)
    assert lay.action_ids.tolist() == [a for e in eps for t in e.turns for a in t.action_token_ids]
    assert torch.all(lay.behaviour_logprobs == -1.0)


def test_turns_without_ids_are_skipped():
    rng = random.Random(2)
    ep = make_episode(rng, 3)
    ep.turns[1].action_token_ids = None
    lay = build_layout([ep])
    assert [s.turn for s in lay.spans] == [0, 2]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_kv_cache_prefix_reuse_matches_naive(attn):
    from hero_gym.agents.scoring import teacher_logits_from_cache

    rng = random.Random(3)
    model = tiny(attn, seed=4)
    eps = [make_episode(rng, 6), make_episode(rng, 4, break_at=2), make_episode(rng, 2)]
    tctx = [teacher_ctx(rng, eps[0], masked={1}), teacher_ctx(rng, eps[1]), teacher_ctx(rng, eps[2], masked={0, 1})]
    lay = build_layout(eps)
    naive, m2 = teacher_logits_naive(model, eps, tctx, lay)
    s_logits, _, cache = student_logits(model, eps, lay, return_cache=True)
    cached, m1 = teacher_logits_from_cache(model, eps, tctx, lay, cache)
    assert torch.equal(m1, m2) and not cached.requires_grad
    torch.testing.assert_close(cached, naive, atol=2e-5, rtol=1e-4)
    # the student's graph is intact: a loss on its logits still backpropagates
    s_logits.sum().backward()
    assert any(p.grad is not None for p in model.parameters())


def test_hidden_logits_form_matches():
    from hero_gym.agents.scoring import HiddenLogits, teacher_logits_from_cache

    rng = random.Random(5)
    model = tiny()
    eps = [make_episode(rng, 3)]
    tctx = [teacher_ctx(rng, eps[0])]
    lay = build_layout(eps)
    dense, _ = teacher_logits_naive(model, eps, tctx, lay)
    lazy, _ = teacher_logits_prefix_cache(model, eps, tctx, lay, as_hidden=True)
    assert isinstance(lazy, HiddenLogits) and lazy.shape == tuple(dense.shape)
    torch.testing.assert_close(lazy[2:5], dense[2:5], atol=1e-5, rtol=1e-4)
    _, _, cache = student_logits(model, eps, lay, return_cache=True)
    lazy2, _ = teacher_logits_from_cache(model, eps, tctx, lay, cache, as_hidden=True)
    torch.testing.assert_close(lazy2.dense(), dense, atol=2e-5, rtol=1e-4)


def test_prefix_cache_with_teacher_weights_matches_naive():
    from hero_gym.agents.scoring import teacher_logits_prefix_cache

    rng = random.Random(6)
    model = tiny("sdpa", seed=2)
    eps = [make_episode(rng, 5), make_episode(rng, 3, break_at=1)]
    tctx = [teacher_ctx(rng, eps[0], masked={3}), teacher_ctx(rng, eps[1])]
    lay = build_layout(eps)
    naive, m2 = teacher_logits_naive(model, eps, tctx, lay)
    got, m1 = teacher_logits_prefix_cache(model, eps, tctx, lay)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(got, naive, atol=2e-5, rtol=1e-4)
    part, _ = teacher_logits_prefix_cache(model, eps, tctx, lay, chain_indices=[1, 2], as_hidden=True)
    n0 = sum(s.length for s in lay.spans if s.episode == 0)
    torch.testing.assert_close(part.dense(), naive[n0:], atol=2e-5, rtol=1e-4)


def test_ema_teacher_projects_with_its_own_head():
    """the lazily projected teacher used the *live* output head after the EMA context ended;
    with a trainable head (full fine-tuning / LoRA on the head) that is not the teacher's head."""
    from hero_gym.agents.scoring import teacher_logits_prefix_cache
    from hero_gym.agents.teachers import TeacherWeights

    rng = random.Random(7)
    model = tiny("sdpa", seed=3)
    eps = [make_episode(rng, 3)]
    tctx = [teacher_ctx(rng, eps[0])]
    lay = build_layout(eps)
    teacher = TeacherWeights(model, "ema", ema_rate=0.05)       # every weight trainable, the head included
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))                   # the live weights move away from the EMA
    with torch.no_grad(), teacher.active():
        want, _ = teacher_logits_naive(model, eps, tctx, lay)
        lazy, _ = teacher_logits_prefix_cache(model, eps, tctx, lay, as_hidden=True)
    live, _ = teacher_logits_naive(model, eps, tctx, lay)
    assert (live - want).abs().max() > 1e-2
    torch.testing.assert_close(lazy.dense(), want, atol=2e-5, rtol=1e-4)


def test_student_hidden_through_head_equals_student_logits():
    from hero_gym.agents.scoring import student_hidden

    rng = random.Random(8)
    model = tiny()
    eps = [make_episode(rng, 4), make_episode(rng, 3, break_at=1)]
    logits, lay = student_logits(model, eps)
    hidden, head = student_hidden(model, eps, lay)
    assert hidden.requires_grad
    torch.testing.assert_close(head(hidden), logits, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("group_tokens", [1, 12, 10**6])
def test_teacher_queries_attend_to_their_own_prefix_only(group_tokens):
    """The teacher encodes each chain's shared prefix once (unpadded, the decoder only) and then the scored
    turns' queries ``note + gen prompt + action[:-1]`` in groups of consecutive turns, each group on top of
    exactly ``max p_t`` cached positions of its turns (a single turn: exactly its own ``p_t``)."""
    from hero_gym.agents.scoring import _block_plan, _query_groups

    rng = random.Random(9)
    model = tiny("sdpa", seed=5)
    eps = [make_episode(rng, 5), make_episode(rng, 3, break_at=1)]
    tctx = [teacher_ctx(rng, eps[0], masked={1}), teacher_ctx(rng, eps[1], masked={0})]
    lay = build_layout(eps)
    calls = []

    def record(module, args, kwargs):
        past = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers >= 5.25 renamed the keyword
        calls.append((kwargs["input_ids"].shape, past.get_seq_length() if past is not None and past.layers
                      and past.layers[0].is_initialized else 0))

    mlp_calls = {-1: 0, -2: 0}

    def count(i):
        def hook(module, args, out):
            mlp_calls[i] += 1
        return hook

    handles = [model.model.register_forward_pre_hook(record, with_kwargs=True),
               model.model.layers[-1].mlp.register_forward_hook(count(-1)),
               model.model.layers[-2].mlp.register_forward_hook(count(-2))]
    try:
        got, m1 = teacher_logits_prefix_cache(model, eps, tctx, lay, group_tokens=group_tokens)
    finally:
        for h in handles:
            h.remove()
    want = []
    for ch in lay.chains:
        plan = _block_plan(ch, eps[ch.episode], tctx[ch.episode])
        groups = _query_groups(plan, group_tokens)
        if not groups:
            continue
        want.append(((1, max(p for p, _, _ in plan if p is not None)), 0))      # the chain's prefix pass, then
        want.extend(((1, sum(len(q) for _, q, _ in g)), max(p for p, _, _ in g)) for g in groups)  # per group
        if group_tokens == 1:
            assert [len(g) for g in groups] == [1] * len(groups)
        if group_tokens == 10**6:
            assert len(groups) == 1
    for ch in lay.chains:                                            # query = the non-shared part, minus one token
        for t, (p, q, act) in zip(ch.turns, _block_plan(ch, eps[ch.episode], tctx[ch.episode])):
            if p is not None:
                assert p + len(q) == len(tctx[ch.episode][t]) + len(act) - 1
    assert calls == want
    # a prefix pass stops once the last layer's keys/values are cached: that layer's MLP runs for the queries only
    n_prefix = sum(1 for _, past in want if past == 0)
    assert mlp_calls == {-1: len(want) - n_prefix, -2: len(want)}
    naive, m2 = teacher_logits_naive(model, eps, tctx, lay)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(got, naive, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_teacher_edge_cases_match_naive(attn):
    """A teacher context sharing no token with the episode (p_t = 0), one-token actions, a chain whose
    turns are all masked, and everything masked."""
    rng = random.Random(10)
    model = tiny(attn, seed=6)
    eps = [make_episode(rng, 4, act_len=1), make_episode(rng, 3, break_at=1), make_episode(rng, 2, act_len=1)]
    tctx = [teacher_ctx(rng, eps[0]), teacher_ctx(rng, eps[1], masked={1, 2}), teacher_ctx(rng, eps[2])]
    tctx[0][2] = [3, 4, 5] + GEN                  # token ids no context uses: p_t = 0
    tctx[2][0] = [6] + GEN
    lay = build_layout(eps)
    naive, m2 = teacher_logits_naive(model, eps, tctx, lay)
    got, m1 = teacher_logits_prefix_cache(model, eps, tctx, lay)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(got, naive, atol=2e-5, rtol=1e-4)
    part, _ = teacher_logits_prefix_cache(model, eps, tctx, lay, chain_indices=[1, 2, 3], as_hidden=True)
    n0 = sum(s.length for s in lay.spans if s.episode == 0)
    torch.testing.assert_close(part.dense(), naive[n0:], atol=2e-5, rtol=1e-4)
    none = [[None] * len(ep.turns) for ep in eps]
    empty, m0 = teacher_logits_prefix_cache(model, eps, none, lay, as_hidden=True)
    assert not m0.any() and empty.shape == (lay.num_tokens, 101)


def test_kernels_without_4d_masks_get_one_turn_per_forward(monkeypatch):
    """Flash-attention kernels ignore custom 4-D masks (a group of turns would attend across turns): they get
    one plain causal forward per turn, whatever ``group_tokens`` says."""
    from types import SimpleNamespace

    from hero_gym.agents import scoring

    for impl, ok in (("eager", True), ("sdpa", True), ("flash_attention_2", False), ("flex_attention", False)):
        assert scoring._supports_4d_masks(SimpleNamespace(config=SimpleNamespace(_attn_implementation=impl))) is ok
    rng = random.Random(11)
    model = tiny("sdpa", seed=7)
    eps = [make_episode(rng, 5)]
    tctx = [teacher_ctx(rng, eps[0], masked={3})]
    lay = build_layout(eps)
    monkeypatch.setattr(scoring, "_supports_4d_masks", lambda m: False)
    masks = []
    handle = model.model.register_forward_pre_hook(
        lambda mod, args, kw: masks.append(kw.get("attention_mask")), with_kwargs=True)
    try:
        got, m1 = teacher_logits_prefix_cache(model, eps, tctx, lay, group_tokens=10**6)
    finally:
        handle.remove()
    assert len(masks) == 1 + 4 and all(m is None for m in masks)     # the prefix + one query per scored turn
    naive, m2 = teacher_logits_naive(model, eps, tctx, lay)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(got, naive, atol=2e-5, rtol=1e-4)
