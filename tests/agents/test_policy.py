"""HFPolicy: batched generation, sampling log-probs, stopping, LoRA, checkpoints; the real default model (slow)."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch

from hero_gym.agents.models import default_device, default_dtype, find_smollm2_gguf
from hero_gym.agents.policy import HFPolicy, KVCache, SamplingConfig, _filter_logits
from hero_gym.agents.scoring import student_logits
from hero_gym.chat import ChatRenderer
from hero_gym.records import Episode, Turn


def contexts(tok, n=4):
    r = ChatRenderer(tok)
    qs = ["hi", "What is the code for apple? Please look it up.", "one two three four five six seven", "ok?"]
    return [r.prompt_ids([{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}])
            for q in (qs * 3)[:n]]


def token_logprobs(policy, ctxs, targets, temperature=1.0, requires_grad=False):
    """Log-probs of ``targets[i]`` after ``ctxs[i]`` as the trainer computes them (one-turn episodes scored
    by :func:`student_logits`), divided by ``temperature`` like a tempered sampler."""
    out = []
    for ctx, tgt in zip(ctxs, targets):
        ep = Episode(env_id="x", initial_observation="", turns=[
            Turn(index=0, action_text="", observation="", context_token_ids=list(ctx), action_token_ids=list(tgt))])
        with torch.set_grad_enabled(requires_grad):
            logits, layout = student_logits(policy.model, [ep])
            out.append(torch.log_softmax(logits.float() / temperature, -1).gather(
                -1, layout.action_ids[:, None].to(logits.device)).squeeze(-1))
    return out


def test_default_device_on_cpu_machine():
    if not torch.cuda.is_available():
        assert default_device().type == "cpu" and default_dtype() == torch.float32


def test_gguf_is_found_in_the_package():
    p = find_smollm2_gguf()
    assert p.suffix == ".gguf" and p.stat().st_size > 50_000_000


def test_batched_greedy_equals_unbatched(tiny_policy, smol_tokenizer):
    ctxs = contexts(smol_tokenizer)
    assert len({len(c) for c in ctxs}) > 1  # different lengths: left padding is exercised
    sc = SamplingConfig(max_new_tokens=12, temperature=0.0)
    batched = tiny_policy.generate(ctxs, sc)
    single = [tiny_policy.generate([c], sc)[0] for c in ctxs]
    assert len({tuple(g.token_ids) for g in batched}) > 1  # the random model is not degenerate
    for b, s in zip(batched, single):
        assert b.token_ids == s.token_ids
        assert b.finish_reason == s.finish_reason == "length"
        assert b.text == s.text == smol_tokenizer.decode(b.token_ids, skip_special_tokens=True)
        assert max(abs(x - y) for x, y in zip(b.logprobs, s.logprobs)) < 1e-4


def test_sampling_logprobs_match_a_recomputed_forward_pass(tiny_policy, smol_tokenizer):
    ctxs = contexts(smol_tokenizer)
    gens = tiny_policy.generate(ctxs, SamplingConfig(max_new_tokens=10, temperature=1.0, seed=3))
    again = tiny_policy.generate(ctxs, SamplingConfig(max_new_tokens=10, temperature=1.0, seed=3))
    assert [g.token_ids for g in gens] == [g.token_ids for g in again]  # seeded
    recomputed = token_logprobs(tiny_policy, ctxs, [g.token_ids for g in gens])
    for g, lp in zip(gens, recomputed):
        assert len(g.logprobs) == len(g.token_ids) == lp.numel()
        assert torch.allclose(torch.tensor(g.logprobs), lp, atol=1e-4)
    # unbatched naive reference for one row: full forward, log_softmax at each position
    c, a = ctxs[1], gens[1].token_ids
    with torch.no_grad():
        logits = tiny_policy.model(input_ids=torch.tensor([c + a])).logits[0].float()
    ref = torch.log_softmax(logits[len(c) - 1:-1], -1).gather(-1, torch.tensor(a)[:, None]).squeeze(-1)
    assert torch.allclose(torch.tensor(gens[1].logprobs), ref, atol=1e-4)


def test_tempered_logprobs_and_greedy_convention(tiny_policy, smol_tokenizer):
    ctxs = contexts(smol_tokenizer, 2)
    gens = tiny_policy.generate(ctxs, SamplingConfig(max_new_tokens=6, temperature=0.7, seed=0))
    tempered = token_logprobs(tiny_policy, ctxs, [g.token_ids for g in gens], temperature=0.7)
    for g, lp in zip(gens, tempered):
        assert torch.allclose(torch.tensor(g.logprobs), lp, atol=1e-4)
    greedy = tiny_policy.generate(ctxs, SamplingConfig(max_new_tokens=6, temperature=0.0))
    raw = token_logprobs(tiny_policy, ctxs, [g.token_ids for g in greedy])
    for g, lp in zip(greedy, raw):  # greedy reports the untempered model log-prob, not 0
        assert torch.allclose(torch.tensor(g.logprobs), lp, atol=1e-4)
        assert all(x < 0 for x in g.logprobs)


def test_top_k_top_p_restrict_the_support(tiny_policy, smol_tokenizer):
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(_filter_logits(logits, 2, 1.0))[0].tolist() == [False, False, True, True, True]
    p = logits.softmax(-1)[0]
    kept = ~torch.isinf(_filter_logits(logits, 0, float(p[0] + p[1]) - 1e-6))[0]
    assert kept.tolist() == [True, True, False, False, False]
    assert (~torch.isinf(_filter_logits(logits, 0, 0.01)))[0].tolist() == [True, False, False, False, False]
    ctx = contexts(smol_tokenizer, 1)
    gens = tiny_policy.generate(ctx * 4, SamplingConfig(max_new_tokens=5, temperature=1.0, top_k=1, seed=0))
    greedy = tiny_policy.generate(ctx, SamplingConfig(max_new_tokens=5, temperature=0.0))[0]
    for g in gens:  # top_k=1 is greedy, and the sampling distribution is a point mass
        assert g.token_ids == greedy.token_ids
        assert all(abs(x) < 1e-6 for x in g.logprobs)


def test_stops_at_stop_tokens_and_per_row_caps(tiny_policy, smol_tokenizer):
    ctxs = contexts(smol_tokenizer, 3)
    free = tiny_policy.generate(ctxs, SamplingConfig(max_new_tokens=10, temperature=0.0))
    stop_tok = free[0].token_ids[3]
    gens = tiny_policy.generate(ctxs, SamplingConfig(max_new_tokens=10, temperature=0.0, stop_token_ids=[stop_tok]))
    first = free[0].token_ids.index(stop_tok)
    assert gens[0].token_ids == free[0].token_ids[: first + 1]
    assert gens[0].finish_reason == "stop"
    assert gens[0].text == smol_tokenizer.decode(free[0].token_ids[:first], skip_special_tokens=True)
    capped = tiny_policy.generate(ctxs, SamplingConfig(max_new_tokens=10, temperature=0.0), max_new_tokens=[2, 10, 0])
    assert capped[0].token_ids == free[0].token_ids[:2] and capped[0].finish_reason == "length"
    assert capped[1].token_ids == free[1].token_ids
    assert capped[2].token_ids == [] and capped[2].logprobs == []
    stop_str = smol_tokenizer.decode(free[1].token_ids[4:5])
    by_string = tiny_policy.generate([ctxs[1]], SamplingConfig(max_new_tokens=10, temperature=0.0, stop=[stop_str]))[0]
    assert by_string.finish_reason == "stop" and stop_str in smol_tokenizer.decode(by_string.token_ids)
    assert len(by_string.token_ids) <= 5


def test_end_of_turn_token_is_a_stop_token(tiny_policy, smol_tokenizer):
    im_end = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in tiny_policy.stop_token_ids
    # make the model strongly prefer <|im_end|> from the third step on (a hook on the output head)
    calls = {"n": 0}

    def boost(module, inputs, output):
        calls["n"] += 1
        if calls["n"] >= 3:
            output = output.clone()
            output[..., im_end] += 1e4
        return output

    handle = tiny_policy.model.get_output_embeddings().register_forward_hook(boost)
    try:
        g = tiny_policy.generate(contexts(smol_tokenizer, 1), SamplingConfig(max_new_tokens=8, temperature=0.0))[0]
    finally:
        handle.remove()
    assert len(g.token_ids) == 3
    assert g.token_ids[-1] == im_end and g.finish_reason == "stop"
    assert im_end not in g.token_ids[:-1]


def test_lora_is_applied_and_trainable(make_tiny_policy, smol_tokenizer, tmp_path):
    policy = make_tiny_policy(lora="default")
    assert policy.is_lora
    trainable = dict((n, p) for n, p in policy.model.named_parameters() if p.requires_grad)
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("down_proj" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in policy.model.named_parameters() if not p.requires_grad}

    ctxs = contexts(smol_tokenizer, 2)
    target = [smol_tokenizer.encode(" lookup", add_special_tokens=False)] * 2
    before = torch.stack([x.sum() for x in token_logprobs(policy, ctxs, target)])
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=1e-2)
    policy.model.train()
    for _ in range(3):
        loss = -torch.stack([x.sum() for x in token_logprobs(policy, ctxs, target, requires_grad=True)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.model.eval()
    after = torch.stack([x.sum() for x in token_logprobs(policy, ctxs, target)])
    assert (after > before + 0.1).all()  # the adapter changed the model
    for n, p in policy.model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), n  # base weights frozen
    with policy.adapter_disabled():  # the base model is untouched
        base = torch.stack([x.sum() for x in token_logprobs(policy, ctxs, target)])
    assert torch.allclose(base, before, atol=1e-5)

    policy.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").exists()
    fresh = make_tiny_policy(lora="default")
    fresh.load(tmp_path / "ckpt")
    loaded = torch.stack([x.sum() for x in token_logprobs(fresh, ctxs, target)])
    assert torch.allclose(loaded, after, atol=1e-5)


def test_full_finetuning_option(make_tiny_policy, smol_tokenizer, tmp_path):
    policy = make_tiny_policy(lora=None)
    assert not policy.is_lora
    n_all = sum(p.numel() for p in policy.model.parameters())
    assert sum(p.numel() for p in policy.trainable_parameters()) == n_all
    with pytest.raises(RuntimeError):
        with policy.adapter_disabled():
            pass
    with torch.no_grad():
        policy.model.get_input_embeddings().weight[5] += 1.0
    policy.save(tmp_path / "full")
    fresh = make_tiny_policy(lora=None)
    fresh.load(tmp_path / "full")
    assert torch.equal(fresh.model.get_input_embeddings().weight, policy.model.get_input_embeddings().weight)


@pytest.mark.slow
def test_default_smollm2_generates():
    from hero_gym.agents.models import load_default_model

    t0 = time.perf_counter()
    model, tok = load_default_model()
    load_s = time.perf_counter() - t0
    policy = HFPolicy(model, tok, lora="default")
    r = ChatRenderer(tok)
    ctx = r.prompt_ids([{"role": "user", "content": "What is the capital of France? Answer in one word."}])
    g = policy.generate([ctx], SamplingConfig(max_new_tokens=16, temperature=0.0))[0]
    assert "paris" in g.text.lower(), g.text
    assert g.finish_reason == "stop" and g.token_ids[-1] == r.end_of_turn_id
    lp = token_logprobs(policy, [ctx], [g.token_ids])[0]
    assert torch.allclose(torch.tensor(g.logprobs), lp, atol=1e-3)
    assert all(math.isfinite(x) for x in g.logprobs)
    print(f"load_default_model: {load_s:.1f}s")


def test_vllm_backend_is_import_guarded():
    from hero_gym.agents.vllm_policy import VLLMPolicy, vllm_available

    if vllm_available():
        pytest.skip("vllm is installed; the GPU backend is not exercised in CPU CI")
    with pytest.raises(ImportError, match="pip install"):
        VLLMPolicy("some/model")


def test_load_model_from_a_local_path(tiny_lm, smol_tokenizer, tmp_path):
    from hero_gym.agents.models import load_model

    tiny_lm.save_pretrained(tmp_path / "m")
    smol_tokenizer.save_pretrained(tmp_path / "m")
    model, tok = load_model(str(tmp_path / "m"), device="cpu")
    assert tok.pad_token_id is not None and tok.chat_template == smol_tokenizer.chat_template
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, tiny_lm(input_ids=ids).logits, atol=1e-5)
    policy = HFPolicy.from_pretrained(str(tmp_path / "m"), lora=None, device="cpu")
    assert policy.generate([[1, 2, 3]], SamplingConfig(max_new_tokens=3, temperature=0.0))[0].token_ids


def test_chunked_batches_keep_order_and_results(tiny_policy, smol_tokenizer):
    ctxs = contexts(smol_tokenizer, 5)
    sc = SamplingConfig(max_new_tokens=6, temperature=0.0)
    whole = tiny_policy.generate(ctxs, sc)
    tiny_policy.max_batch_size, tiny_policy.max_batch_tokens = 2, 60
    assert all(len(c) <= 2 for c in tiny_policy._chunks([len(c) + 6 for c in ctxs]))
    chunked = tiny_policy.generate(ctxs, sc)
    assert [g.token_ids for g in chunked] == [g.token_ids for g in whole]
    for a, b in zip(whole, chunked):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


# run first in a subprocess: every name lookup and socket connect is recorded (in ``attempts``) and refused
_NO_NETWORK = ("import socket\n"
               "attempts = []\n"
               "def _refuse(self, *a, **k):\n"
               "    attempts.append(a)\n"
               "    raise OSError('network disabled by the test')\n"
               "socket.socket.connect = socket.socket.connect_ex = _refuse\n"
               "socket.getaddrinfo = lambda *a, **k: _refuse(None, *a)\n")


def test_uncached_hub_id_fails_without_touching_the_network(monkeypatch):
    from hero_gym.agents.models import load_model

    import socket

    attempts = []

    def refuse(self, *args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.delenv("HERO_GYM_ALLOW_DOWNLOADS", raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: refuse(None, *args))
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        load_model("hero-gym-tests/definitely-not-a-model")
    assert attempts == []


def test_cached_hub_id_loads_offline(tiny_lm, smol_tokenizer, tmp_path):
    """A Hugging Face id that is in the local HF cache loads like a path (in a subprocess with its own cache)
    without opening a network connection."""
    import os
    import subprocess
    import sys

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--hero-gym-tests--tiny"
    snap = repo / "snapshots" / commit
    tiny_lm.save_pretrained(snap)
    smol_tokenizer.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")}
    env.pop("HERO_GYM_ALLOW_DOWNLOADS", None)
    code = _NO_NETWORK + (
        "from hero_gym.agents.models import load_model\n"
        "m, tok = load_model('hero-gym-tests/tiny', device='cpu')\n"
        "print(type(m).__name__, tok.convert_tokens_to_ids('<|im_end|>'), len(attempts))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    name, im_end, attempts = out.stdout.split()[-3:]
    assert name == "LlamaForCausalLM" and int(im_end) == 2
    assert int(attempts) == 0


def test_kv_caches_encode_only_new_tokens_and_match_full_contexts(tiny_policy, smol_tokenizer):
    """Two rounds of a conversation per row: the second round, given the first round's caches, encodes only
    the tokens after the cached prefix and samples what a full re-encode samples. Rows mix cached, uncached
    and a cache whose ids diverge from the context (only the common prefix is reused)."""

    r = ChatRenderer(smol_tokenizer)
    ctxs = contexts(smol_tokenizer, 4)
    sc = SamplingConfig(max_new_tokens=7, temperature=0.0)
    caches = [KVCache(), KVCache(), None, KVCache()]
    first = tiny_policy.generate(ctxs, sc, max_new_tokens=[7, 3, 7, 5], kv_caches=caches)
    for c, ctx, g in zip(caches, ctxs, first):
        if c is not None:  # the cache covers the context and the reply but its last token
            assert c.ids == ctx + g.token_ids[:-1]
            assert c.layers[0][0].shape[2] == len(c.ids)
    nxt = []
    for ctx, g in zip(ctxs, first):
        prev = [{"role": "user", "content": "x"}, {"role": "assistant", "content": g.text}]
        nxt.append(ctx + g.token_ids + r.continuation_ids(prev, [{"role": "user", "content": "and then?"}],
                                                          sampled_ids=g.token_ids))
    caches[3].ids[len(ctxs[3]) - 2] += 1  # a stale cache: diverges two tokens before the end of ctxs[3]
    before = tiny_policy.encoded_tokens
    second = tiny_policy.generate(nxt, sc, kv_caches=caches)
    encoded = tiny_policy.encoded_tokens - before
    reused = [len(ctxs[0]) + 6, len(ctxs[1]) + 2, 0, len(ctxs[3]) - 2]
    assert encoded == sum(len(n) for n in nxt) - sum(reused)
    reference = tiny_policy.generate(nxt, sc)
    assert len({tuple(g.token_ids) for g in reference}) > 1
    for a, b in zip(second, reference):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
    with pytest.raises(ValueError, match="kv_caches"):
        tiny_policy.generate(ctxs, sc, kv_caches=[KVCache()])


def test_inverse_cdf_sampling_draws_from_the_distribution():
    """``sample_tokens`` matches the target frequencies (as ``torch.multinomial`` does, the control) and
    never draws a token of probability 0, including the first and last ids."""
    from hero_gym.agents.policy import sample_tokens

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0]] * 4 + [[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    n = 20000
    draws = torch.stack([sample_tokens(probs, gen) for _ in range(n // 4)])  # [n/4, 5]
    freq = torch.bincount(draws[:, :4].reshape(-1), minlength=6).double() / draws[:, :4].numel()
    ref = torch.multinomial(probs[0], n, replacement=True, generator=torch.Generator().manual_seed(1))
    ref_freq = torch.bincount(ref, minlength=6).double() / n
    target = probs[0].double()
    assert (freq[target == 0] == 0).all()
    assert (draws[:, 4] == 5).all()
    # 5 standard errors of a proportion at n=20000 is < 0.02
    assert torch.allclose(freq, target, atol=0.02) and torch.allclose(ref_freq, target, atol=0.02)
    # unnormalised rows are scaled, not truncated
    assert sample_tokens(torch.tensor([[0.0, 3.0]]), gen).item() == 1


def test_a_prefix_shared_by_new_conversations_is_encoded_once(make_tiny_policy, smol_tokenizer):
    """Rows whose caches lack the prefix they all share (new episodes with one system prompt) get it
    encoded once: the same ids and log-probs as re-encoding every row, ``encoded_tokens`` lower by the
    prefix for every row but one, and the caches end as usual. Control: ``share_prefix=False`` encodes it
    per row, and a shared prefix shorter than the minimum is not split off."""
    r = ChatRenderer(smol_tokenizer)
    system = "You are a careful assistant in a long shared system prompt. " * 4
    qs = ["hi", "What is the code for apple?", "one two three", "ok?"]
    ctxs = [r.prompt_ids([{"role": "system", "content": system}, {"role": "user", "content": q}]) for q in qs]
    common = len(os.path.commonprefix(ctxs))
    assert common > HFPolicy.SHARED_PREFIX_MIN_TOKENS
    sc = SamplingConfig(max_new_tokens=6, temperature=0.0)
    policy = make_tiny_policy(lora=None)
    reference = policy.generate(ctxs, sc)
    assert len({tuple(g.token_ids) for g in reference}) > 1
    encoded = {}
    for share in (True, False):
        policy.share_prefix = share
        caches = [KVCache(), KVCache(), None, KVCache()]
        before = policy.encoded_tokens
        out = policy.generate(ctxs, sc, kv_caches=caches)
        encoded[share] = policy.encoded_tokens - before
        for a, b in zip(out, reference):
            assert a.token_ids == b.token_ids
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4
        for c, ctx, g in zip(caches, ctxs, out):
            if c is not None:
                assert c.ids == ctx + g.token_ids[:-1]
                assert c.layers[0][0].shape[2] == len(c.ids)
    assert encoded[False] == sum(len(c) for c in ctxs)
    assert encoded[True] == encoded[False] - 2 * common  # three cached rows, the prefix encoded once
    short = contexts(smol_tokenizer, 4)  # "Be brief." prompts: a short common prefix is not worth a pass
    assert len(os.path.commonprefix(short)) < HFPolicy.SHARED_PREFIX_MIN_TOKENS
    policy.share_prefix = True
    before = policy.encoded_tokens
    policy.generate(short, sc, kv_caches=[KVCache() for _ in short])
    assert policy.encoded_tokens - before == sum(len(c) for c in short)
