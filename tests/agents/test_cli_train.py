"""``hero-gym train`` and ``hero-gym eval`` on a tiny model."""

import json

from typer.testing import CliRunner

from hero_gym.cli import app
from hero_gym.records import load_jsonl


def test_train_then_eval_with_the_saved_adapter(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "hero_gym/Lookup-v0", "--model", "tiny", "--method", "hero", "--budget", "6",
                              "--out", str(out), "-k", "num_items=2", "-c", "group_size=2",
                              "-c", "tasks_per_update=1", "-c", "max_new_tokens=8", "-c", "max_turns=3",
                              # a random tiny model rarely stops: keep its reflection short
                              "-c", "reflector_max_new_tokens=24", "-c", "reflector_retries=0"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "adapter saved" in res.output
    assert (out / "adapter" / "adapter_config.json").exists()
    episodes = load_jsonl(out / "checkpoint" / "episodes.jsonl")
    assert len(episodes) >= 2 and all(ep.env_id == "hero_gym/Lookup-v0" for ep in episodes)
    assert sum(len(ep.turns) for ep in episodes) >= 6       # the turn budget was spent
    metrics = (out / "checkpoint" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 1

    eval_out = tmp_path / "eval.jsonl"
    res = runner.invoke(app, ["eval", "hero_gym/Lookup-v0", "--model", "tiny", "--adapter", str(out / "adapter"),
                              "--episodes", "2", "-k", "num_items=2", "-k", "max_turns=2", "--out", str(eval_out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["n_episodes"] == 2.0 and 0.0 <= summary["success_rate"] <= 1.0
    assert len(load_jsonl(eval_out)) == 2
