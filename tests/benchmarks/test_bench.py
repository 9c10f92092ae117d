"""The benchmark protocol's pieces: snapshot choice, statistics, options, comparisons, reuse."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from hero_gym.agents import bench
from hero_gym.agents.bench import stats
from hero_gym.agents.checkpoint import list_snapshots, snapshot_for_budget


# ------------------------------------------------------------------ snapshots
def _snapshots(root: Path, turns: list[int]) -> dict[int, Path]:
    for t in turns:
        d = root / "snapshots" / f"turns_{t:07d}"
        d.mkdir(parents=True)
        (d / "snapshot.json").write_text(json.dumps({"turns": t}))
    return list_snapshots(root)


def test_snapshot_for_budget_is_the_first_snapshot_at_or_past_the_budget(tmp_path):
    """The largest snapshot <= B left the top budget's last batch trained but never evaluated."""
    snaps = _snapshots(tmp_path, [0, 6, 11, 18])
    assert [snapshot_for_budget(tmp_path, b) for b in (0, 1, 6, 10, 11, 12, 18)] == [
        snaps[0], snaps[6], snaps[6], snaps[11], snaps[11], snaps[18], snaps[18]]
    with pytest.raises(FileNotFoundError, match="no snapshot at or past 19"):
        snapshot_for_budget(tmp_path, 19)


def test_steps_at_counts_updates_within_the_turns():
    rows = [{"update": 1, "turns_used": 6}, {"update": 2, "turns_used": 11}, {"update": 3, "turns_used": 17}]
    assert [bench.steps_at(rows, t) for t in (0, 5, 6, 16, 17, 99)] == [0, 0, 1, 2, 3, 3]
    assert bench.steps_at([{"optimizer_steps": 4, "turns_used": 3}], 3) == 4


# ------------------------------------------------------------------ statistics
def test_paired_bootstrap_ci_known_cases():
    assert bench.paired_bootstrap_ci([1, 0, 1], [1, 0, 1]) == (0.0, 0.0, 0.0)
    assert bench.paired_bootstrap_ci([1, 1, 1, 1], [0, 0, 0, 0]) == (1.0, 1.0, 1.0)
    d, lo, hi = bench.paired_bootstrap_ci([1, 0] * 50, [0, 0] * 50, n_boot=4000)
    assert d == pytest.approx(0.5)
    # the sample mean of 100 Bernoulli(0.5) differences has SE 0.05: the 95% interval is about +-0.1
    assert 0.38 < lo < 0.42 and 0.58 < hi < 0.62
    # deterministic for a seed, and pairing matters: the same marginals, paired differently
    assert bench.paired_bootstrap_ci([1, 0, 1, 0], [0, 1, 0, 1], seed=3) == bench.paired_bootstrap_ci(
        [1, 0, 1, 0], [0, 1, 0, 1], seed=3)
    _, lo_p, hi_p = bench.paired_bootstrap_ci([1, 0] * 20, [1, 0] * 20)
    _, lo_u, hi_u = bench.paired_bootstrap_ci([1, 0] * 20, [0, 1] * 20)
    assert (lo_p, hi_p) == (0.0, 0.0) and lo_u < -0.2 and hi_u > 0.2   # differences of +-1: SE 0.16


def test_cluster_bootstrap_resamples_goals_not_pairs():
    """3 seeds that repeat the same 10 goal outcomes are 10 observations, not 30. Treating the
    30 (seed, goal) pairs as independent gave an interval sqrt(3) too narrow."""
    per_goal = [1, 1, 1, 0, 0, 1, 0, 1, 1, 0]
    d = per_goal * 3
    goals = list(range(10)) * 3
    clustered = stats.cluster_bootstrap(d, goals, n_boot=8000)
    naive = stats.cluster_bootstrap(d, None, n_boot=8000)
    one_seed = stats.cluster_bootstrap(per_goal, None, n_boot=8000)
    width = lambda b: b["high"] - b["low"]   # noqa: E731
    assert clustered["clusters"] == 10 and naive["clusters"] == 30
    assert width(clustered) == pytest.approx(width(one_seed), rel=0.15)      # the information of 10 goals
    assert width(naive) < 0.7 * width(clustered)
    assert clustered["mean"] == pytest.approx(0.6) and 0 <= clustered["p"] <= 1
    assert stats.cluster_bootstrap([0, 0, 0], [1, 1, 2])["p"] == 1.0
    assert stats.cluster_bootstrap([1, 1, 1, 1], [1, 2, 3, 4])["p"] == 0.0
    with pytest.raises(ValueError, match="one cluster per value"):
        stats.cluster_bootstrap([1, 0], [1])


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([]) == [] and stats.holm([0.6, 0.6]) == [1.0, 1.0]


def test_paired_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        bench.paired_bootstrap_ci([1, 0], [1])
    with pytest.raises(ValueError, match="at least one pair"):
        bench.paired_bootstrap_ci([], [])
    with pytest.raises(ValueError, match="level"):
        bench.paired_bootstrap_ci([1], [0], level=1.5)


def test_mean_se():
    m, se = bench.mean_se([0.0, 1.0, None])
    assert m == 0.5 and se == pytest.approx(0.5)
    assert np.isnan(bench.mean_se([0.3])[1]) and np.isnan(bench.mean_se([])[0])


# ------------------------------------------------------------------ comparisons
def _cell(env, method, budget, seed, successes):
    per_task = [{"task": i, "success": float(s), "score": float(s), "turns": 2, "valid_turns": 2}
                for i, s in enumerate(successes)]
    return {"env": env, "method": method, "budget": budget, "seed": seed, "per_task": per_task,
            **bench.summarise_cell(per_task), "optimizer_steps": budget // 4, "snapshot_turns": budget}


def test_compare_clusters_goals_adjusts_for_the_family_and_compares_scores():
    cells = [_cell("E", "base", 0, None, [0, 0, 0, 0])]
    for seed in (0, 1, 2):
        cells.append(_cell("E", "hero", 8, seed, [1, 1, 0, 0]))
        cells.append(_cell("E", "grpo", 8, seed, [1, 1, 0, 0]))
        cells.append(_cell("E", "envfb_sd", 8, seed, [0, 0, 0, 0]))
    comps = bench.compare(cells, "hero", [0, 1, 2], n_boot=500)
    assert {c["metric"] for c in comps} == {"success", "score"}      # a CI on mean score too
    succ = {c["other"]: c for c in comps if c["metric"] == "success"}
    assert set(succ) == {"base", "grpo", "envfb_sd"}
    assert succ["grpo"]["diff"] == 0 and succ["grpo"]["verdict"] == "no difference detected"
    assert succ["envfb_sd"]["diff"] == pytest.approx(0.5) and succ["envfb_sd"]["pairs"] == 12
    assert succ["envfb_sd"]["goals"] == 4 and "clusters" in succ["envfb_sd"]["bootstrap"]
    assert succ["base"]["pairs"] == 12 and succ["base"]["seeds"] == 3
    # Holm over the 3 comparisons of a metric: never below the raw p-value
    assert all(c["comparisons"] == 3 and c["p_holm"] >= c["p"] for c in comps)
    assert succ["grpo"]["p_holm"] == 1.0


def test_summary_has_tokens_trained_wasted_turns_and_their_intervals():
    """Tokens trained / scored turns per method, and turns on successes, redundant and
    no-effect turns per episode with goal-clustered CIs."""
    cells = []
    for seed, tokens in ((0, 100), (1, 300)):
        c = _cell("E", "hero", 8, seed, [1, 0, 1])
        for i, r in enumerate(c["per_task"]):
            r.update(turns=2 + i, redundant_turns=i, no_effect_turns=1)
        c.update(bench.summarise_cell(c["per_task"]), tokens_trained=tokens, scored_turns=tokens // 10)
        cells.append(c)
    (row,) = bench.summarise(cells, [0, 1], [8], n_boot=500)
    assert row["tokens_trained"] == 200 and row["scored_turns"] == 20
    assert row["mean_turns_successful"] == pytest.approx(3.0)     # tasks 0 and 2: 2 and 4 turns
    assert row["redundant_per_episode"] == pytest.approx(1.0) and row["no_effect_per_episode"] == 1.0
    lo, hi = row["redundant_per_episode_ci"]
    assert lo < 1.0 < hi and row["no_effect_per_episode_ci"] == (1.0, 1.0)


def test_summarise_orders_methods_and_averages_over_seeds():
    cells = [_cell("E", "hero", 8, 0, [1, 0]), _cell("E", "hero", 8, 1, [1, 1]), _cell("E", "base", 0, None, [0, 0]),
             _cell("E", "grpo", 8, 0, [0, 0])]
    rows = bench.summarise(cells, [0, 1], [8])
    assert [(r["method"], r["budget"]) for r in rows] == [("base", 0), ("grpo", 8), ("hero", 8)]
    hero = rows[-1]
    assert hero["success_rate"] == pytest.approx(0.75) and hero["success_rate_se"] == pytest.approx(0.25)


# ------------------------------------------------------------------ options
def test_presets_and_overrides():
    o = bench.parse_args([])
    assert o.preset == "default" and o.warm_start and o.envs == ["WebShop"] and o.reference == "hero_rules"
    assert o.env_kwargs == {"WebShop": {"max_results": 5, "instruction_once": True}} and o.changed == []
    assert bench.preset_label(asdict(o)) == "default preset"
    q = bench.parse_args(["--quick", "--budgets", "12", "6", "--no-warm-start"])
    assert q.model == "tiny" and q.budgets == [6, 12] and q.out == "runs/quick"
    c = bench.parse_args(["--preset", "cpu"])
    assert c.envs == ["WebShop"] and len(c.seeds) >= 3 and c.reference == "hero"
    # the cpu preset's cells are a superset of the default's (same warm start, goals and env options)
    for name in ("env_kwargs", "warm_start_overrides", "eval_tasks", "group_size", "tasks_per_update", "lr"):
        assert getattr(c, name) == getattr(o, name), name
    assert set(o.methods) <= set(c.methods) and set(o.budgets) <= set(c.budgets) and set(o.seeds) <= set(c.seeds)
    t = bench.parse_args(["--preset", "cpu", "--threads", "1", "--seeds", "0"])
    assert bench.preset_label(asdict(t)) == "cpu preset, changed: seeds, threads"
    e = bench.parse_args(["--preset", "cpu", "--env-kwarg", "WebShop:max_results=3"])   # parsed after the flags
    assert bench.preset_label(asdict(e)) == "cpu preset, changed: env_kwargs"
    assert c.methods[0] == "base" and set(bench.available_methods()) <= set(c.methods) | set(bench.METHOD_ORDER)
    assert bench.parse_args(["--methods", "grpo"]).reference is None   # nothing to compare against
    k = bench.parse_args(["--env-kwarg", "WebShop:max_results=5", "--env-kwarg", "WebShop:instruction_once=true"])
    assert k.env_kwargs == {"WebShop": {"max_results": 5, "instruction_once": True}}
    ws = bench.setups_for(k)["WebShop"]
    assert ws.train_kwargs["max_results"] == 5 and ws.eval_kwargs["instruction_once"] is True
    assert ws.train_kwargs["split"] == "train" and ws.eval_kwargs["split"] == "test"


def test_cpu_presets_have_grpo_groups_of_four_and_the_free_rules_ablation():
    """GRPO with groups of 2 rarely sees a reward difference; the shuffled ablations
    draw donors from other tasks, so a batch needs >= 2 tasks; HERO (rules)' settle-it control costs no model."""
    for preset in ("default", "cpu"):
        o = bench.parse_args(["--preset", preset])
        assert o.group_size >= 4 and o.tasks_per_update >= 2, preset
        assert "hero_rules_shuffled" in o.methods, preset
    assert bench.parse_args(["--quick"]).tasks_per_update >= 2


def test_lookup_trains_and_evaluates_on_disjoint_existing_tasks():
    """Lookup was evaluated on its training tasks (no split) and the bench indexed 20 eval
    and 50 training tasks of an 8-task table (an index >= 8 raised and was scored as a failure)."""
    import hero_gym

    setup = bench.setups_for(bench.parse_args(["--quick"]))["Lookup"]
    items = {}
    for name, kwargs, n in (("train", setup.train_kwargs, setup.train_tasks), ("eval", setup.eval_kwargs,
                                                                             setup.eval_tasks)):
        env = hero_gym.make(setup.env_id, **kwargs)
        assert n <= env.unwrapped.num_tasks(), name
        items[name] = set()
        for i in range(n):
            env.reset(options={"task_index": i})
            items[name].add(env.unwrapped._item)
        env.close()
    assert items["train"] and items["eval"] and not items["train"] & items["eval"]
    # the warm start clones the training items only (WebShop's reset selects its split itself)
    from hero_gym.agents.bench.source import _warm_start_env_kwargs

    assert _warm_start_env_kwargs(setup)["split"] == "train"
    assert "split" not in _warm_start_env_kwargs(bench.setups_for(bench.parse_args(["--quick"]))["WebShop"])


def test_tau_full_demo_gets_a_longer_demonstration_clip():
    setups = bench.setups_for(bench.parse_args([]))
    assert setups["TauRetail"].demo_max_chars > 2000 and setups["TauAirline"].demo_max_chars > 2000
    assert setups["WebShop"].demo_max_chars == 2000


def test_wasted_turns_reuse_the_rule_verdicts():
    """Redundant turns (the same action again in the same state) and no-effect turns per episode."""
    from hero_gym.records import Episode, Turn

    call = {"name": "lookup", "arguments": {"key": "apple"}}
    turns = [Turn(index=0, action_text="a", observation="412", parsed_action=call, observation_role="tool"),
             Turn(index=1, action_text="a", observation="412", parsed_action=call, observation_role="tool"),
             Turn(index=2, action_text="b", observation="Correct.", reward=1.0, terminated=True,
                  parsed_action={"name": "answer", "arguments": {"code": "412"}})]
    ep = Episode(env_id="x", initial_observation="What is the code for apple?", turns=turns, success=True,
                 options={"task_index": 3})
    assert bench.wasted_turns(ep) == (0, 1)        # the repeat saw a new observation: no effect, not redundant
    ep.turns.insert(2, turns[1].model_copy(update={"index": 2}))
    assert bench.wasted_turns(ep) == (1, 1)        # the same call on the same observation again: redundant
    (row,) = bench.per_task_rows([ep])
    assert row["redundant_turns"] == 1 and row["no_effect_turns"] == 1 and row["task"] == 3
    assert bench.summarise_cell([row])["mean_turns_successful"] == 4


def test_cpu_long_preset_is_sized_as_the_experiment_asks():
    """Three seeds, >= 50 goals, groups of 4, nested budgets whose top one is >= 16 optimizer steps even if
    every episode runs to the turn cap, the privileged ceiling only where asked for (not in the defaults)."""
    o = bench.parse_args(["--preset", "cpu-long"])
    turns_per_batch_max = o.tasks_per_update * o.group_size * bench.setups_for(o)["WebShop"].max_turns
    assert o.seeds == [0, 1, 2] and o.eval_tasks >= 50 and o.group_size >= 4 and o.workers == 2
    assert len(o.budgets) == 2 and max(o.budgets) // turns_per_batch_max >= 16 and max(o.budgets) == 2 * min(o.budgets)
    assert "hero_rules_oracle" in o.methods and o.reference == "hero_rules"
    assert "hero_rules_oracle" not in bench.parse_args(["--preset", "cpu"]).methods
    assert "hero_rules_oracle" in bench.parse_args(["--preset", "cpu", "--methods", "hero_rules_oracle"]).methods


def test_a_repeated_invalid_action_is_a_redundant_turn():
    """An invalid action changes nothing, so clicking a missing button again (whatever the error message
    said in between) is redundant; the same click after a valid action moved the page is not."""
    from hero_gym.records import Episode, Turn

    err = {"kind": "invalid_action", "message": "There is no button '4'."}
    page = "Instruction: buy a lamp [SEP] Back to Search [SEP] Lamp A [SEP] Lamp B"
    turns = [Turn(index=0, action_text="click[4]", observation="There is no button '4'.", action_error=err),
             Turn(index=1, action_text=" Click[4] ", observation="There is no button '4'.", action_error=err),
             Turn(index=2, action_text="click[Lamp A]", observation="Lamp A [SEP] Buy Now"),
             Turn(index=3, action_text="click[4]", observation="There is no button '4'.", action_error=err)]
    ep = Episode(env_id="hero_gym/WebShop-v0", initial_observation=page, turns=turns)
    assert bench.wasted_turns(ep)[0] == 1
    ep.turns[1] = turns[1].model_copy(update={"action_text": "click[5]"})
    assert bench.wasted_turns(ep)[0] == 0          # the control: a different invalid action is not a repeat


@pytest.mark.parametrize("argv, msg", [
    (["--envs", "Nope"], "unknown env"),
    (["--methods", "bogus"], "unknown method"),
    (["--budgets", "8", "8"], "distinct positive"),
    (["--budgets", "0"], "distinct positive"),
    (["--methods", "grpo", "--reference", "hero"], "reference method"),
    (["--quick", "--preset", "cpu"], "exclusive"),
    (["--env-kwarg", "WebShop-max_results=5"], "ENV:KEY=VALUE"),
    (["--env-kwarg", "Nope:x=1"], "ENV:KEY=VALUE"),
])
def test_bad_options_give_one_line_errors(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_out_is_relative_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bench.resolve_out("runs/x") == tmp_path / "runs" / "x"
    assert bench.resolve_out("/abs/dir") == Path("/abs/dir")


def test_report_only_on_an_empty_folder_errors_and_creates_nothing(tmp_path):
    target = tmp_path / "nothing_here"
    with pytest.raises(SystemExit, match="no finished cells"):
        bench.main(["--report-only", "--out", str(target)])
    assert not target.exists()


def test_code_fingerprint_is_stable_and_excludes_the_bench_module():
    fp = bench.code_fingerprint()
    assert len(fp) == 16 and fp == bench.code_fingerprint()


def test_method_labels():
    assert bench.method_label("base", warm_start=True) == "Warm-started base"
    assert bench.method_label("hero") == "HERO" and bench.method_label("grpo") == "GRPO"
    assert bench.method_label("hero_shuffled") == "HERO (shuffled diagnoses)"


def test_cli_bench_help_lists_the_options():
    from typer.testing import CliRunner

    from hero_gym.cli import app

    res = CliRunner().invoke(app, ["bench", "--help"])
    assert res.exit_code == 0
    for opt in ("--preset", "--quick", "--budgets", "--seeds", "--methods", "--out", "--report-only", "--warm-start"):
        assert opt in res.output


def test_report_only_rebuilds_from_saved_cells(tmp_path):
    """A finished run's folder (cells + results.json) is enough to rebuild every output."""
    out = tmp_path / "run"
    cells = [_cell("Lookup", "base", 0, None, [0, 1, 0])]
    for seed in (0, 1):
        for m in ("grpo", "hero_rules"):
            for b in (4, 8):
                cells.append(_cell("Lookup", m, b, seed, [seed % 2, 1, b // 8]))
    for c in cells:
        d = out / "cells" / bench.cell_key(c["env"], c["method"], c["budget"], c["seed"])
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({**c, "eval_seconds": 1.0, "wall_seconds": 2.0}))
    opts = bench.Options(preset="quick", envs=["Lookup"], methods=["base", "grpo", "hero_rules"],
                         reference="hero_rules", budgets=[4, 8], seeds=[0, 1], out=str(out))
    prov = {"options": json.loads(json.dumps(asdict(opts))), "out": str(out), "reused_cells": 0,
            "invocation_seconds": 1.0, "wall_seconds": 30.0, "git_commit": "abc",
            "hardware": {"device": "cpu", "cpu_count": 2, "processor": "x", "torch": "2", "torch_threads": 1},
            "envs": {"Lookup": {"env_id": "hero_gym/Lookup-v0", "eval_kwargs": {}, "eval_tasks": 3, "max_turns": 4,
                                "data": {"source": "generated", "fingerprint": "f00"}}}}
    (out / "results.json").write_text(json.dumps({"provenance": prov}))
    res = bench.main(["--report-only", "--out", str(out)])
    assert len(res["cells"]) == len(cells)
    table = (out / "results.md").read_text()
    assert "HERO (rules) − method" in table and "| Lookup | 8 | GRPO |" in table
    for column in ("tokens trained", "scored turns", "turns on successes", "redundant turns / ep", "score [95% CI]"):
        assert column in table, column
    assert "Holm" in table and "resamples goals as clusters" in table and "comparisons" in table
    assert (out / "curves_Lookup.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "results.csv").read_text().splitlines())) == len(cells) + 1
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"tokens_trained", "scored_turns", "redundant_per_episode", "mean_turns_successful"} <= set(header)

    # one invocation per seed into one folder: the last one's provenance says seeds [1]; the command line's
    # --seeds selects every seed's cells, the run's other settings stay, and the compute is summed again
    prov["options"]["seeds"] = [1]
    (out / "results.json").write_text(json.dumps({"provenance": prov}))
    assert len(bench.main(["--report-only", "--out", str(out)])["cells"]) == 1 + 2 * 2
    res = bench.main(["--report-only", "--out", str(out), "--seeds", "0", "1"])
    assert len(res["cells"]) == len(cells)
    merged = json.loads((out / "results.json").read_text())["provenance"]
    assert merged["options"]["seeds"] == [0, 1] and merged["options"]["reference"] == "hero_rules"
    assert merged["wall_seconds"] == pytest.approx(1.0 * len(cells)) and merged["report_only"]


def test_report_counts_a_runs_training_from_its_metrics_log_when_run_json_counts_less(tmp_path):
    """A run that an older bench resumed from its checkpoint recorded only its last invocation in run.json;
    the report takes the per-iteration times of its metrics log (in the run's ``train/`` folder, or the copy
    committed beside run.json) when they add up to more. Without a log, run.json stands."""
    from hero_gym.agents.bench.report import collect_finished

    opts = bench.Options(preset="quick", envs=["Lookup"], methods=["grpo"], budgets=[4], seeds=[0, 1, 2],
                         out=str(tmp_path))
    rows = [{"iteration": i, "seconds": {"iteration": 4.0}} for i in (1, 2, 3)]
    for seed, where in ((0, "train"), (1, "."), (2, None)):
        d = tmp_path / "runs" / f"Lookup__grpo__s{seed}"
        d.mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"env": "Lookup", "method": "grpo", "seed": seed,
                                                "train_seconds": 5.0, "metrics": []}))
        if where is not None:
            (d / where).mkdir(exist_ok=True)
            (d / where / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, runs = collect_finished(tmp_path, opts)
    assert [r["train_seconds"] for r in runs] == [12.0, 12.0, 5.0]
