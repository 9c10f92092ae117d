"""The benchmark's GPU pieces, checked on a CPU: the ``paper`` preset, ``--rollout {hf,vllm}`` (vLLM
replaced by the FAKE engine of ``tests/agents/fake_vllm.py``), one base model per worker with a fresh LoRA per
run, worker i on GPU i, a cap on evaluation slots, snapshots only at the budgets."""
import multiprocessing
import os
import sys
from pathlib import Path

import pytest
import torch

from hero_gym.agents import bench
from hero_gym.agents.bench import presets, protocol, source, workers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agents"))
import fake_vllm  # noqa: E402  (tests/agents/fake_vllm.py)


def test_paper_preset_runs_every_method_with_large_groups_and_one_worker_per_gpu():
    o = bench.parse_args(["--preset", "paper"])
    assert o.methods == presets.FAIR_METHODS   # every fair method (the privileged ceiling only when named)
    assert o.group_size >= 8 and o.env_kwargs == {} and o.tool_prompt == "full" and not o.warm_start
    assert o.workers == max(1, torch.cuda.device_count()) and o.device == "cuda"
    assert o.snapshots == "budgets" and o.eval_slots and o.eval_tasks == 0
    assert bench.preset_label({"preset": o.preset, "changed": o.changed}) == "paper preset"


def test_rollout_eval_slots_and_snapshots_options():
    text = presets.build_parser().format_help()
    assert "--rollout" in text and "vllm" in text and "--eval-slots" in text and "--snapshots" in text
    o = bench.parse_args(["--rollout", "vllm", "--eval-slots", "4", "--snapshots", "budgets"])
    assert (o.rollout, o.eval_slots, o.snapshots) == ("vllm", 4, "budgets")
    assert "rollout" in o.changed and "eval_slots" not in o.changed      # slots change speed, not results
    with pytest.raises(SystemExit):
        bench.parse_args(["--rollout", "sglang"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--eval-slots", "0"])


def test_worker_i_gets_gpu_i(monkeypatch, tmp_path):
    assert [workers.worker_gpu(i, ["2", "3"]) for i in range(3)] == ["2", "3", "2"]
    assert workers.worker_gpu(0, []) is None
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    opts = bench.parse_args(["--quick", "--device", "cuda"])
    seen = []
    threads = torch.get_num_threads()
    try:
        for _ in range(2):
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
            workers._worker_init(opts, str(tmp_path), None, counter, ["5", "7"])
            seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
    finally:
        torch.set_num_threads(threads)
    assert seen == ["5", "7"]


def test_one_base_model_per_process_and_a_fresh_seeded_lora_per_run():
    opts = bench.parse_args(["--quick", "--envs", "Lookup", "--device", "cpu"])
    src = source.ModelSource(opts)
    setup = presets.setups_for(opts)["Lookup"]
    a = src.policy(setup, 0)
    base = {n: p.data_ptr() for n, p in a.base_model.named_parameters() if "lora" not in n}
    with torch.no_grad():
        for n, p in a.model.named_parameters():
            if "lora_B" in n:
                p.fill_(1.0)                                   # as if a run trained it
    b = src.policy(setup, 1)
    assert b is a                                              # no second copy of the model
    assert {n: p.data_ptr() for n, p in b.base_model.named_parameters() if "lora" not in n} == base
    assert all(float(p.detach().abs().sum()) == 0 for n, p in b.model.named_parameters() if "lora_B" in n)
    lora_a = {n: p.detach().clone() for n, p in b.model.named_parameters() if "lora_A" in n}
    c = src.policy(setup, 0)
    assert not all(torch.equal(lora_a[n], p) for n, p in c.model.named_parameters() if "lora_A" in n)


def test_evaluation_runs_at_most_eval_slots_episodes_at_once(monkeypatch, tmp_path):
    import hero_gym.agents.trainer as T

    seen = {}

    def fake_evaluate(policy, env_id, env_kwargs, **kw):
        seen.update(kw)
        return T.EvalResult(0.0, 0.0, 0.0, episodes=[])

    monkeypatch.setattr(T, "evaluate", fake_evaluate)
    opts = bench.parse_args(["--quick", "--envs", "Lookup", "--eval-tasks", "5", "--eval-slots", "2"])
    b = protocol.Bench(opts, tmp_path, log=lambda s: None)
    b.evaluate(object(), b.setups["Lookup"])
    assert seen["num_envs"] == 2 and len(seen["task_indices"]) == 5
    opts.eval_slots = None
    b.evaluate(object(), b.setups["Lookup"])
    assert seen["num_envs"] == 5                               # the control: all at once


def test_snapshots_at_budgets_in_bf16_on_cuda_and_in_the_fingerprint(tmp_path):
    opts = bench.parse_args(["--quick", "--envs", "Lookup", "--snapshots", "budgets", "--device", "cuda"])
    b = protocol.Bench(opts, tmp_path, log=lambda s: None)
    assert b.snapshot_settings() == {"snapshot_budgets": opts.budgets, "snapshot_dtype": "bfloat16"}
    opts.device = "cpu"
    assert b.snapshot_settings()["snapshot_dtype"] == "keep"
    run = protocol.Run("Lookup", "envfb_sd", 0)
    fp = b.run_fingerprint(b.setups["Lookup"], run)
    opts.snapshots = "every"
    assert b.snapshot_settings() == {} and b.gpu_settings() == {}
    assert b.run_fingerprint(b.setups["Lookup"], run) != fp


def test_bench_with_rollout_vllm_trains_and_evaluates_through_the_engine(tmp_path, monkeypatch):
    from hero_gym.agents import vllm_policy
    from hero_gym.agents.models import load_default_tokenizer, tiny_model

    monkeypatch.setattr(vllm_policy, "vllm_api", fake_vllm.api)
    fake_vllm.LLM.instances.clear()
    tok = load_default_tokenizer()
    model = tmp_path / "model"
    tiny_model(tok, seed=0).save_pretrained(model)
    tok.save_pretrained(model)
    res = bench.main(["--quick", "--model", str(model), "--envs", "Lookup", "--methods", "envfb_sd",
                      "--budgets", "4", "--seeds", "0", "--rollout", "vllm", "--snapshots", "budgets",
                      "--device", "cpu", "--workers", "1", "--out", str(tmp_path / "out")])
    assert {c["method"] for c in res["cells"]} == {"base", "envfb_sd"}
    assert len(fake_vllm.LLM.instances) == 1                   # one engine for the base model of this process
    engine = fake_vllm.LLM.instances[0]
    assert engine.events.count("generate") >= 2 and "sleep" in engine.events
    assert all(c["lora"] is not None for c in engine.calls)    # rollouts and evaluations served an adapter
