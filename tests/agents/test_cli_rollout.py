"""``--rollout {hf,vllm}`` on ``hero-gym train`` and ``hero-gym eval``, vLLM replaced by the FAKE engine of
``tests/agents/fake_vllm.py`` (vLLM does not install on CPU machines)."""
import json
import re

import fake_vllm  # tests/agents/fake_vllm.py
import pytest
from typer.testing import CliRunner

from hero_gym.agents import vllm_policy
from hero_gym.cli import app


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_rollout_option_is_in_the_help(command):
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--rollout" in _plain(res.output) and "vllm" in _plain(res.output)


def test_train_and_eval_with_rollout_vllm(tmp_path, smol_tokenizer, monkeypatch):
    from hero_gym.agents.models import tiny_model

    fake_vllm.LLM.instances.clear()
    monkeypatch.setattr(vllm_policy, "vllm_api", fake_vllm.api)
    model = tmp_path / "base"
    tiny_model(smol_tokenizer, seed=1).save_pretrained(model)
    smol_tokenizer.save_pretrained(model)
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "hero_gym/Lookup-v0", "--model", str(model), "--method", "envfb_sd",
                              "--budget", "4", "--out", str(out), "--rollout", "vllm", "--vllm-memory", "0.3",
                              "--max-model-len", "1024", "-k", "num_items=2", "-c", "group_size=2",
                              "-c", "tasks_per_update=1", "-c", "max_new_tokens=6", "-c", "max_turns=2"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    engine = fake_vllm.LLM.instances[-1]
    assert engine.engine_args["gpu_memory_utilization"] == 0.3 and engine.engine_args["max_model_len"] == 1024
    assert engine.events.count("generate") >= 1 and engine.calls[-1]["lora"] is not None
    res = runner.invoke(app, ["eval", "hero_gym/Lookup-v0", "--model", str(model), "--adapter", str(out / "adapter"),
                              "--episodes", "2", "-k", "num_items=2", "-k", "max_turns=2", "--rollout", "vllm"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    engine = fake_vllm.LLM.instances[-1]
    assert engine.calls and all(c["lora"].lora_path == str(out / "adapter") for c in engine.calls)
    assert json.loads(res.output[res.output.index("{"):])["n_episodes"] == 2.0


def test_rollout_errors_are_one_line(capsys):
    from hero_gym.cli import main

    assert main(["eval", "hero_gym/Lookup-v0", "--model", "tiny", "--rollout", "vllm"]) != 0
    err = capsys.readouterr().err
    assert "tiny" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "hero_gym/Lookup-v0", "--model", "tiny", "--rollout", "sglang"]) != 0
    err = capsys.readouterr().err
    assert "hf" in err and "vllm" in err and len(err.strip().splitlines()) == 1
