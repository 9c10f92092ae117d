"""The GPU-sizing behaviour that a CPU can check: decode limits from free device memory, one host
sync per decoded token, a cap on cached tokens across env slots, snapshots only where budgets read them
(bf16 on request), no teacher pass for a micro-batch without a scored turn, half-precision trainable weights
refused, the CUDA RNG in the resume state, one base model serving many runs (``reset_adapter``)."""
from __future__ import annotations

import json

import pytest
import torch

from hero_gym.agents.checkpoint import list_snapshots, load_snapshot, snapshot_for_budget
from hero_gym.agents.models import kv_bytes_per_token, tiny_model
from hero_gym.agents.policy import CPU_DECODE_LIMITS, HFPolicy, SamplingConfig, decode_limits
from hero_gym.agents.rollout import collect
from hero_gym.agents.trainer import TrainConfig, train
from hero_gym.agents.update import update
from hero_gym.records import Episode, Turn

LOOKUP = "hero_gym/Lookup-v0"


pytestmark = pytest.mark.usefixtures("one_thread")


def qwen7b_config():
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4)


# --------------------------------------------------------------------------- decode sizing
def test_kv_bytes_per_token_of_a_7b_shape():
    assert kv_bytes_per_token(qwen7b_config(), torch.bfloat16) == 2 * 28 * 4 * 128 * 2 == 57344


def test_decode_limits_scale_with_free_memory_and_cpu_keeps_its_defaults(make_tiny_policy):
    assert decode_limits(None, qwen7b_config(), torch.bfloat16) == CPU_DECODE_LIMITS
    p = make_tiny_policy()
    assert (p.max_batch_size, p.max_batch_tokens, p.max_cached_tokens) == (64, 65536, None)
    small = decode_limits(8 << 30, qwen7b_config(), torch.bfloat16)
    big = decode_limits(64 << 30, qwen7b_config(), torch.bfloat16)
    assert big.max_batch_tokens > 7 * small.max_batch_tokens and big.max_batch_size >= small.max_batch_size
    assert big.max_cached_tokens == int(0.3 * (64 << 30) // 57344)          # ~360k tokens: ~44 slots of 8k
    # what a batch may take stays within the share of free memory it was sized from
    per_token = 57344 + (4 * 3584 + 2 * 18944) * 2
    assert big.max_batch_tokens * per_token <= 0.4 * (64 << 30)
    assert decode_limits(64 << 30, qwen7b_config(), torch.bfloat16, max_rows=32).max_batch_size == 32


def test_explicit_limits_override_the_sizing(smol_tokenizer):
    p = HFPolicy(tiny_model(smol_tokenizer), smol_tokenizer, lora=None, device="cpu", max_batch_size=3,
                 max_batch_tokens=100, max_cached_tokens=50)
    assert (p.max_batch_size, p.max_batch_tokens, p.max_cached_tokens) == (3, 100, 50)


def test_decoding_syncs_with_the_host_once_per_token(tiny_policy, monkeypatch):
    calls = {"n": 0}
    real = torch.Tensor.tolist

    def counting(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counting)
    g = tiny_policy.generate([[1, 2, 3], [4, 5, 6, 7]], SamplingConfig(max_new_tokens=12, temperature=1.0,
                                                                       stop_token_ids=[], seed=0))
    steps = max(len(x.token_ids) for x in g)
    assert steps >= 5 and calls["n"] <= steps + 2


# --------------------------------------------------------------------------- cached tokens across slots
def test_cached_tokens_are_capped_across_slots_with_the_same_replies(tiny_policy):
    held = []
    real = tiny_policy.generate

    def watch(ctxs, sampling=None, **kw):
        out = real(ctxs, sampling, **kw)
        held.append(sum(len(c.ids) for c in kw.get("kv_caches") or [] if c is not None))
        return out

    tiny_policy.generate = watch
    tasks = [{"seed": i, "options": {"task_index": i}} for i in range(3)]
    sc = SamplingConfig(max_new_tokens=6, temperature=0.0)
    free = collect(tiny_policy, LOOKUP, tasks=tasks, num_envs=3, sampling=sc, env_kwargs={"max_turns": 3})
    free_held = list(held)
    held.clear()
    cap = max(free_held) // 2
    capped = collect(tiny_policy, LOOKUP, tasks=tasks, num_envs=3, sampling=sc, env_kwargs={"max_turns": 3},
                     max_cached_tokens=cap)
    assert max(free_held) > cap                                  # the control: uncapped it holds more
    # the cap holds between turns (a step may add up to one reply per slot before the cap is applied)
    assert all(h <= cap + 3 * 8 for h in held[1:])
    assert [[t.action_token_ids for t in e.turns] for e in capped] == [[t.action_token_ids for t in e.turns]
                                                                       for e in free]
    held.clear()
    tiny_policy.max_cached_tokens = cap                          # the policy's own cap is the default
    collect(tiny_policy, LOOKUP, tasks=tasks, num_envs=3, sampling=sc, env_kwargs={"max_turns": 3})
    assert all(h <= cap + 3 * 8 for h in held[1:])


# --------------------------------------------------------------------------- snapshots at budgets
def _cfg(tmp, **kw):
    base = dict(method="envfb_sd", env_id=LOOKUP, env_kwargs={"num_items": 4}, turn_budget=12, tasks_per_update=1,
                group_size=2, max_turns=2, max_new_tokens=6, lr=5e-2, checkpoint_dir=str(tmp), seed=1)
    return TrainConfig(**{**base, **kw})


def test_snapshots_only_where_budgets_read_them_with_the_same_answers(smol_tokenizer, tmp_path):
    every = tmp_path / "every"
    train(HFPolicy(tiny_model(smol_tokenizer, seed=4), smol_tokenizer), _cfg(every))
    at = tmp_path / "at"
    budgets = [3, 12]
    train(HFPolicy(tiny_model(smol_tokenizer, seed=4), smol_tokenizer), _cfg(at, snapshot_budgets=budgets))
    all_snaps, few = list_snapshots(every), list_snapshots(at)
    assert len(few) < len(all_snaps) and 0 in few
    for b in budgets + [0]:
        a, e = snapshot_for_budget(at, b), snapshot_for_budget(every, b)
        assert json.loads((a / "snapshot.json").read_text()) == json.loads((e / "snapshot.json").read_text())
        fa = HFPolicy(tiny_model(smol_tokenizer, seed=4), smol_tokenizer)
        fe = HFPolicy(tiny_model(smol_tokenizer, seed=4), smol_tokenizer)
        load_snapshot(fa, a)
        load_snapshot(fe, e)
        assert all(torch.equal(x, y) for x, y in zip(fa.trainable_parameters(), fe.trainable_parameters()))


def test_bf16_snapshots_halve_the_lora_weights_on_disk(smol_tokenizer, tmp_path):
    from safetensors import safe_open

    kw = dict(turn_budget=2, snapshot_budgets=[2])
    train(HFPolicy(tiny_model(smol_tokenizer, seed=4), smol_tokenizer), _cfg(tmp_path / "k", **kw))
    train(HFPolicy(tiny_model(smol_tokenizer, seed=4), smol_tokenizer),
          _cfg(tmp_path / "b", snapshot_dtype="bfloat16", **kw))
    k, b = (list_snapshots(tmp_path / d)[0] / "weights.safetensors" for d in ("k", "b"))
    with safe_open(str(b), "pt") as f:
        assert {f.get_tensor(n).dtype for n in f.keys()} == {torch.bfloat16}
    assert b.stat().st_size < 0.6 * k.stat().st_size
    with pytest.raises(ValueError, match="snapshot_dtype"):
        TrainConfig(snapshot_dtype="fp8")


# --------------------------------------------------------------------------- teacher pass per micro-batch
def test_no_teacher_pass_for_a_micro_batch_without_a_scored_turn(make_tiny_policy, monkeypatch):
    import importlib

    T = importlib.import_module("hero_gym.agents.update")   # (the package exports a function of that name)
    calls = []
    real = T.teacher_logits_prefix_cache
    monkeypatch.setattr(T, "teacher_logits_prefix_cache", lambda *a, **k: calls.append(k["chain_indices"]) or real(*a, **k))
    ep = lambda: Episode(env_id="x", initial_observation="", turns=[Turn(  # noqa: E731
        index=0, action_text="a", observation="", context_token_ids=[1, 2, 3, 4], action_token_ids=[5, 6])])
    policy = make_tiny_policy()
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    cfg = TrainConfig(method="envfb_sd", micro_batch_episodes=1)
    monkeypatch.setattr(T, "teacher_contexts_for", lambda r, eps, notes: [
        [[1, 2, 9, 3, 4] if n is not None else None for n in ns] for ns in notes])
    assert update(policy, opt, [ep(), ep()], [["note"], [None]], cfg).stepped
    assert len(calls) == 1                                    # only the micro-batch with a note
    calls.clear()
    update(policy, opt, [ep(), ep()], [["note"], ["note"]], cfg)
    assert len(calls) == 2                                    # the control: both micro-batches scored


# --------------------------------------------------------------------------- master weights
def test_half_precision_trainable_weights_are_refused(smol_tokenizer, tmp_path):
    full_bf16 = HFPolicy(tiny_model(smol_tokenizer, seed=2), smol_tokenizer, lora=None, device="cpu",
                         dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="master"):
        train(full_bf16, _cfg(tmp_path / "a", max_updates=1))
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    # a LoRA adapter on a bf16 base trains: PEFT keeps the adapter weights in fp32
    lora_bf16 = HFPolicy(tiny_model(smol_tokenizer, seed=2, dtype=torch.bfloat16), smol_tokenizer, device="cpu")
    assert {p.dtype for p in lora_bf16.trainable_parameters()} == {torch.float32}
    # full fine-tuning in fp32 trains (the control)
    full_fp32 = HFPolicy(tiny_model(smol_tokenizer, seed=2), smol_tokenizer, lora=None, device="cpu")
    assert train(full_fp32, _cfg(tmp_path / "c", max_updates=1, turn_budget=2)).iterations == 1


# --------------------------------------------------------------------------- resume state
def test_resume_state_carries_every_gpus_rng(monkeypatch):
    import hero_gym.agents.checkpoint as C

    saved = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: restored.append(s))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    state = C._rng_state()
    assert state["cuda"] is saved
    C._set_rng_state(state)
    assert restored == [saved]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        C._set_rng_state(state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in C._rng_state()
    C._set_rng_state({k: v for k, v in state.items()})        # a GPU checkpoint still resumes on a CPU


# --------------------------------------------------------------------------- one base, many runs
def test_reset_adapter_gives_a_fresh_seeded_lora_on_the_same_base(smol_tokenizer, tmp_path):
    policy = HFPolicy(tiny_model(smol_tokenizer, seed=6), smol_tokenizer)
    base_ptrs = {n: p.data_ptr() for n, p in policy.base_model.named_parameters() if "lora" not in n}
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = policy.model(input_ids=x).logits
    train(policy, _cfg(tmp_path, max_updates=1, turn_budget=4))
    with torch.no_grad():
        assert not torch.allclose(policy.model(input_ids=x).logits, before)     # trained: the control
    policy.reset_adapter(11)
    with torch.no_grad():
        assert torch.allclose(policy.model(input_ids=x).logits, before, atol=1e-6)
    other = HFPolicy(tiny_model(smol_tokenizer, seed=6), smol_tokenizer)
    other.reset_adapter(11)
    a = {n: p for n, p in policy.model.named_parameters() if "lora_A" in n}
    assert all(torch.equal(a[n], p) for n, p in other.model.named_parameters() if "lora_A" in n)
    assert {n: p.data_ptr() for n, p in policy.base_model.named_parameters() if "lora" not in n} == base_ptrs
    with pytest.raises(RuntimeError):
        HFPolicy(tiny_model(smol_tokenizer), smol_tokenizer, lora=None).reset_adapter(0)
