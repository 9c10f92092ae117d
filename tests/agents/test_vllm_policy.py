"""The vLLM rollout backend's wiring, against a FAKE engine (``tests/agents/fake_vllm.py``: vLLM's documented
offline interface on top of a transformers model). vLLM itself does not install on CPU machines; nothing
here shows that the real engine works, only that VLLMPolicy drives that interface as documented."""
from __future__ import annotations

import pytest
import torch

from hero_gym.agents.policy import HFPolicy, SamplingConfig
from hero_gym.agents.rollout import collect
from hero_gym.agents.trainer import TrainConfig, evaluate, train
from hero_gym.agents.vllm_policy import DEFAULT_GPU_MEMORY_UTILIZATION, VLLMPolicy, make_rollout_policy
from hero_gym.chat import ChatRenderer

import fake_vllm  # tests/agents/fake_vllm.py (pytest puts this folder on sys.path)

LOOKUP = "hero_gym/Lookup-v0"


def token_logprobs(policy, ctxs, targets):
    """Model log-probs of ``targets[i]`` after ``ctxs[i]`` as the trainer scores them."""
    from hero_gym.agents.scoring import student_logits
    from hero_gym.records import Episode, Turn

    out = []
    for ctx, tgt in zip(ctxs, targets):
        ep = Episode(env_id="x", initial_observation="", turns=[
            Turn(index=0, action_text="", observation="", context_token_ids=list(ctx), action_token_ids=list(tgt))])
        with torch.no_grad():
            logits, layout = student_logits(policy.model, [ep])
        out.append(torch.log_softmax(logits.float(), -1).gather(-1, layout.action_ids[:, None]).squeeze(-1))
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def model_dir(tmp_path, smol_tokenizer):
    from hero_gym.agents.models import tiny_model

    d = tmp_path / "base"
    tiny_model(smol_tokenizer, seed=5, max_position_embeddings=4096).save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return d


def test_engine_gets_a_set_memory_fraction_sleep_mode_and_lora(model_dir):
    p = VLLMPolicy(model_dir, api=fake_vllm.api(), max_model_len=512)
    args = p.llm.engine_args
    assert args["gpu_memory_utilization"] == DEFAULT_GPU_MEMORY_UTILIZATION < 0.9   # not vLLM's default
    assert args["enable_sleep_mode"] is True and p.can_sleep
    assert args["enable_lora"] is True and args["max_lora_rank"] == 16
    assert args["max_model_len"] == 512 and p.max_context_tokens == 512
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMPolicy(model_dir, api=fake_vllm.api(), gpu_memory_utilization=1.5)


def test_an_older_vllm_without_sleep_mode_is_detected_by_feature(model_dir):
    p = VLLMPolicy(model_dir, api=fake_vllm.api(fake_vllm.LLMWithoutSleep))
    assert not p.can_sleep and "enable_sleep_mode" not in p.llm.engine_args
    assert "logprobs_mode" not in p.llm.engine_args          # rejected by this engine, dropped, retried
    assert p.max_context_tokens == 4096                      # read from the engine (the model's window)
    with p.released():                                       # a no-op here
        pass
    with pytest.raises(ValueError, match="sleep"):
        VLLMPolicy(model_dir, api=fake_vllm.api(fake_vllm.LLMWithoutSleep), sleep_mode=True)


def test_generations_match_the_hf_policy_token_for_token(model_dir, smol_tokenizer):
    from hero_gym.agents.models import load_model

    p = VLLMPolicy(model_dir, smol_tokenizer, api=fake_vllm.api())
    hf = HFPolicy(load_model(str(model_dir), device="cpu")[0], smol_tokenizer, lora=None, device="cpu")
    r = ChatRenderer(smol_tokenizer)
    ctxs = [r.prompt_ids([{"role": "user", "content": t}]) for t in ("hello", "find the red item please")]
    sc = SamplingConfig(max_new_tokens=8, temperature=0.0)
    got, want = p.generate(ctxs, sc), hf.generate(ctxs, sc)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.text for g in got] == [w.text for w in want]
    assert torch.allclose(torch.tensor(got[0].logprobs), torch.tensor(want[0].logprobs), atol=1e-5)


def test_context_cap_is_the_engines_max_model_len(model_dir, smol_tokenizer):
    """Without the cap the engine refuses the prompt (as vLLM does); with it the episode ends gracefully."""
    p = VLLMPolicy(model_dir, smol_tokenizer, api=fake_vllm.api(), max_model_len=300)
    r = ChatRenderer(smol_tokenizer)
    long_ctx = r.prompt_ids([{"role": "user", "content": "word " * 400}])
    assert len(long_ctx) > 300
    with pytest.raises(ValueError, match="maximum model length"):          # the control: the raw engine
        p.llm.generate([fake_vllm.TokensPrompt(long_ctx)], [fake_vllm.SamplingParams()])
    g = p.generate([long_ctx], SamplingConfig(max_new_tokens=4))[0]         # never sent to the engine
    assert g.token_ids == [] and g.finish_reason == "length"
    # an episode that outgrows the window: the first context fits, a few turns do not
    task = [{"seed": 0, "options": {"task_index": 0}}]
    first = collect(p, LOOKUP, tasks=task, env_kwargs={"max_turns": 1}, sampling=SamplingConfig(max_new_tokens=1))
    window = first[0].metadata["context_tokens"] + 40
    p = VLLMPolicy(model_dir, smol_tokenizer, api=fake_vllm.api(), max_model_len=window)
    eps = collect(p, LOOKUP, tasks=task, env_kwargs={"max_turns": 20},
                  sampling=SamplingConfig(max_new_tokens=16, temperature=1.0, seed=1))
    assert eps[0].metadata["stop_reason"] == "context_overflow" and len(eps[0].turns) >= 1
    assert all(len(t.context_token_ids) + len(t.action_token_ids) <= window for t in eps[0].turns)
    ev = evaluate(p, LOOKUP, {}, task_indices=[0, 1], max_new_tokens=16, max_turns=20)
    assert [e.metadata["stop_reason"] for e in ev.episodes] == ["context_overflow"] * 2


def test_train_hands_the_adapter_over_and_sleeps_the_engine_around_updates(model_dir, smol_tokenizer, tmp_path):
    from hero_gym.agents.models import load_model

    rollout = make_rollout_policy("vllm", str(model_dir), smol_tokenizer, api=fake_vllm.api(), max_model_len=1024)
    policy = HFPolicy(load_model(str(model_dir), device="cpu")[0], smol_tokenizer, device="cpu")
    cfg = TrainConfig(method="envfb_sd", env_id=LOOKUP, env_kwargs={"num_items": 4}, turn_budget=6,
                      tasks_per_update=1, group_size=2, max_turns=2, max_new_tokens=6, lr=5e-2,
                      checkpoint_dir=str(tmp_path / "run"))
    res = train(policy, cfg, rollout_policy=rollout)
    assert res.optimizer_steps >= 1
    ev = rollout.llm.events
    assert ev.count("generate") >= res.iterations and not rollout.sleeping
    # every update ran with the engine asleep: each sleep is followed by a wake-up before the next generate
    assert ev.count("sleep") == res.iterations == ev.count("wake_up")
    for i, e in enumerate(ev):
        if e == "sleep":
            assert ev[i + 1:].index("wake_up") < (ev[i + 1:] + ["generate"]).index("generate")
    # a fresh LoRARequest id per hand-over (start + every step), each loaded by the engine
    assert rollout.lora_request.lora_int_id == res.optimizer_steps + 1
    # the engine now serves the trained adapter: its log-probs are the trained policy's, not the base's
    r = ChatRenderer(smol_tokenizer)
    ctx = r.prompt_ids([{"role": "user", "content": "look up item 2"}])
    g = rollout.generate([ctx], SamplingConfig(max_new_tokens=6, temperature=0.0))[0]
    trained = token_logprobs(policy, [ctx], [g.token_ids])[0]
    with policy.adapter_disabled():
        base = token_logprobs(policy, [ctx], [g.token_ids])[0]
    assert torch.allclose(torch.tensor(g.logprobs), trained, atol=1e-4)
    assert not torch.allclose(trained, base, atol=1e-4)                      # the control: training moved it


def test_make_rollout_policy_names(model_dir):
    assert make_rollout_policy("hf", "smollm2") is None
    with pytest.raises(ValueError, match="'hf' or 'vllm'"):
        make_rollout_policy("sglang", "smollm2")
    with pytest.raises(ValueError, match="tiny"):
        make_rollout_policy("vllm", "tiny", api=fake_vllm.api())
    p = make_rollout_policy("vllm", str(model_dir), api=fake_vllm.api(), gpu_memory_utilization=0.2)
    assert p.llm.engine_args["gpu_memory_utilization"] == 0.2 and p.tokenizer is not None


def test_model_reflector_generates_through_the_rollout_backend(model_dir, smol_tokenizer, tmp_path):
    from hero_gym.agents.models import load_model

    rollout = VLLMPolicy(model_dir, smol_tokenizer, api=fake_vllm.api(), max_model_len=2048)
    policy = HFPolicy(load_model(str(model_dir), device="cpu")[0], smol_tokenizer, device="cpu")
    calls = []
    real = policy.generate
    policy.generate = lambda *a, **k: calls.append(1) or real(*a, **k)
    cfg = TrainConfig(method="hero", env_id=LOOKUP, env_kwargs={"num_items": 4}, turn_budget=2, tasks_per_update=1,
                      group_size=1, max_turns=2, max_new_tokens=4, reflector_max_new_tokens=8, reflector_retries=0)
    train(policy, cfg, rollout_policy=rollout)
    assert not calls                              # neither rollouts nor the reflector used the HF policy
    assert len(rollout.llm.calls) >= 2            # rollouts and the reflection


def test_the_smoke_scripts_vllm_check_runs_against_the_fake(smol_tokenizer):
    """``benchmarks/gpu_smoke.py``'s vLLM check (run for real only on CUDA with vLLM) on the fake engine: it
    starts the engine, hands a non-trivial adapter over and compares log-probs with the HF policy's."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import gpu_smoke

    r = gpu_smoke.check_vllm(smol_tokenizer, "cpu", api=fake_vllm.api(), dtype="float32")
    assert r["ok"] and r["slept"] and r["sleep_mode"], r
    assert r["lora_logprob_max_abs_diff"] < 1e-4 and r["greedy_rows_equal_to_hf"] == "8/8"
    engine = fake_vllm.LLM.instances[-1]
    assert engine.engine_args["gpu_memory_utilization"] == 0.2 and "load_lora:1" in engine.events
