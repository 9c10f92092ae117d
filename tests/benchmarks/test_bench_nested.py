"""Nested budgets: one training run per (method, seed); each budget evaluates the right snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hero_gym.agents import bench
from hero_gym.agents.bench import protocol
from hero_gym.agents.checkpoint import list_snapshots, snapshot_for_budget


def _opts(out: Path) -> bench.Options:
    return bench.Options(preset="quick", model="tiny", warm_start=False, envs=["Lookup"], methods=["base", "envfb_sd"],
                         reference=None, budgets=[4, 12], seeds=[0], eval_tasks=2, max_turns=3, max_new_tokens=8,
                         group_size=2, tasks_per_update=1, out=str(out))


def test_each_budget_reads_the_first_snapshot_at_or_past_it(tmp_path, monkeypatch):
    loaded: list[Path] = []
    real_load = protocol.load_snapshot

    def recording_load(policy, path):
        loaded.append(Path(path))
        real_load(policy, path)

    monkeypatch.setattr(protocol, "load_snapshot", recording_load)
    logs: list[str] = []
    b = bench.Bench(_opts(tmp_path), tmp_path, log=logs.append)
    cells: list[dict] = []
    run = b.run_cells(bench.Run("Lookup", "envfb_sd", 0), cells.append)

    # one training run to the largest budget, with a snapshot at the start and after every update
    assert sum(line.startswith("trained ") for line in logs) == 1
    snaps = list_snapshots(tmp_path / "runs" / "Lookup__envfb_sd__s0" / "train")
    turns = [m["turns_used"] for m in run["metrics"]]
    assert sorted(snaps) == [0, *turns] and turns[-1] >= 12 - 6 and len(turns) >= 2
    # snapshots hold different weights (env-feedback SD has a gradient even when every reward is 0;
    # GRPO on a model that never succeeds would not), so reading the wrong one would show
    w = {t: b"".join(f.read_bytes() for f in sorted(p.glob("*.safetensors"))) for t, p in snaps.items()}
    assert all(w.values()) and len(set(w.values())) == len(w)

    # the model at budget B is the first snapshot at or past B; the top budget reads the run's final weights
    expected = [next((t, p) for t, p in snaps.items() if p == snapshot_for_budget(snaps[0].parent.parent, budget))
                for budget in (4, 12)]
    assert loaded == [p for _, p in expected]
    assert [c["budget"] for c in cells] == [4, 12] and expected[0] != expected[1]
    assert [c["snapshot_turns"] for c in cells] == [t for t, _ in expected]
    assert cells[0]["snapshot_turns"] >= 4 and cells[1]["snapshot_turns"] == turns[-1] >= 12
    assert [c["optimizer_steps"] for c in cells] == [bench.steps_at(run["metrics"], t) for t, _ in expected]
    # what each method trained, up to its snapshot
    rows = {m["turns_used"]: m for m in run["metrics"]}
    for c in cells:
        assert c["tokens_trained"] == rows[c["snapshot_turns"]]["tokens_trained_total"] > 0
        assert c["scored_turns"] == sum(m["scored_turns"] for m in run["metrics"] if m["turns_used"] <= c["snapshot_turns"])

    # a second pass with the same settings reuses the run and every cell (fingerprints match)
    loaded.clear()
    b2 = bench.Bench(_opts(tmp_path), tmp_path, log=logs.append)
    again: list[dict] = []
    b2.run_cells(bench.Run("Lookup", "envfb_sd", 0), again.append)
    assert loaded == [] and b2.reused == 2 and all(c["reused"] for c in again)
    assert [c["success_rate"] for c in again] == [c["success_rate"] for c in cells]
    assert b2.kept_aside == []

    # another setting (here the learning rate) changes the fingerprint: the run is redone, not reused, and the
    # finished run and its cells are kept aside under stale/, byte for byte (never deleted)
    rdir = tmp_path / "runs" / "Lookup__envfb_sd__s0"
    old_files = {p.relative_to(rdir): p.read_bytes() for p in rdir.rglob("*") if p.is_file()}
    old_fp = (rdir / "fingerprint").read_text()
    o = _opts(tmp_path)
    o.lr = 1e-3
    b3 = bench.Bench(o, tmp_path, log=logs.append)
    b3.run_cells(bench.Run("Lookup", "envfb_sd", 0), lambda c: None)
    assert b3.reused == 0 and b3.rerun_stale == 2
    kept = tmp_path / "stale" / "runs" / f"Lookup__envfb_sd__s0__{old_fp}"
    assert {p.relative_to(kept): p.read_bytes() for p in kept.rglob("*") if p.is_file()} == old_files
    assert f"stale/runs/Lookup__envfb_sd__s0__{old_fp}" in b3.kept_aside
    assert sum(a.startswith("stale/cells/") for a in b3.kept_aside) == 2
    assert (rdir / "fingerprint").read_text() != old_fp


def test_a_run_resumed_from_its_checkpoint_counts_the_training_it_restored(tmp_path, monkeypatch):
    """A run interrupted between sittings resumes from its checkpoint; its recorded training time covers the
    iterations the checkpoint restored, not only the last invocation's. The restored iterations are made slow
    (1.5 s each), so a run.json that counted only the resumed invocation would fall short of them."""
    import time

    from hero_gym.agents import trainer

    real_update, real_collect, calls = trainer.update, trainer.collect_batch, []

    def slow_update(*a, **k):
        time.sleep(1.5)
        return real_update(*a, **k)

    def interrupted_collect(*a, **k):
        calls.append(1)
        if len(calls) == 3:   # after two checkpointed iterations
            raise KeyboardInterrupt
        return real_collect(*a, **k)

    o = _opts(tmp_path)
    o.budgets = [40]
    with monkeypatch.context() as m:
        m.setattr(trainer, "update", slow_update)
        m.setattr(trainer, "collect_batch", interrupted_collect)
        with pytest.raises(KeyboardInterrupt):
            bench.Bench(o, tmp_path, log=lambda line: None).run_cells(bench.Run("Lookup", "envfb_sd", 0), lambda c: None)
    rdir = tmp_path / "runs" / "Lookup__envfb_sd__s0"
    assert not (rdir / "run.json").exists()

    run = bench.Bench(o, tmp_path, log=lambda line: None).run_cells(bench.Run("Lookup", "envfb_sd", 0), lambda c: None)
    rows = [json.loads(x) for x in (rdir / "train" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    restored = sum(r["seconds"]["iteration"] for r in rows[:2])
    assert len(rows) > 2 and restored >= 3.0
    assert run["train_seconds"] >= sum(r["seconds"]["iteration"] for r in rows)
    assert json.loads((rdir / "run.json").read_text())["train_seconds"] == run["train_seconds"]


@pytest.fixture
def evaluated(monkeypatch) -> list[int]:
    """Counts ``Bench.evaluate`` calls (one entry per held-out evaluation actually played)."""
    calls: list[int] = []
    real_evaluate = bench.Bench.evaluate

    def counting_evaluate(self, policy, setup):
        calls.append(1)
        return real_evaluate(self, policy, setup)

    monkeypatch.setattr(bench.Bench, "evaluate", counting_evaluate)
    return calls


def test_weights_without_a_step_reuse_the_base_evaluation(tmp_path, evaluated):
    """GRPO on a tiny model that never succeeds takes no optimizer step: every budget's weights are the base's,
    so its evaluation is the base cell's (not replayed)."""
    o = _opts(tmp_path)
    o.methods, o.budgets = ["base", "grpo"], [1, 8]
    b = bench.Bench(o, tmp_path, log=lambda s: None)
    base = b.base_cell("Lookup")
    cells: list[dict] = []
    b.run_cells(bench.Run("Lookup", "grpo", 0), cells.append)
    assert [c["optimizer_steps"] for c in cells] == [0, 0] and cells[0]["snapshot_turns"] >= 1
    assert all(c["per_task"] == base["per_task"] and c["eval_seconds"] == 0.0 for c in cells)
    assert len(evaluated) == 1   # the base only
    # an iteration without a step snapshots no weights of its own, only a pointer to the previous ones
    snaps = list_snapshots(tmp_path / "runs" / "Lookup__grpo__s0" / "train")
    assert all(not (p / "weights.safetensors").exists() for t, p in snaps.items() if t > 0)


def test_budgets_that_read_the_same_snapshot_evaluate_it_once(tmp_path, evaluated):
    b = bench.Bench(_opts(tmp_path), tmp_path, log=lambda s: None)
    b.run_cells(bench.Run("Lookup", "envfb_sd", 0), lambda c: None)     # trains to 12 turns
    snaps = sorted(list_snapshots(tmp_path / "runs" / "Lookup__envfb_sd__s0" / "train"))
    first = snaps[1]                     # the first snapshot after an update; a batch is >= 2 turns
    evaluated.clear()
    o = _opts(tmp_path)
    o.budgets = [first - 1, first]       # both read the snapshot at `first` turns (the run is reused)
    b2 = bench.Bench(o, tmp_path, log=lambda s: None)
    cells: list[dict] = []
    b2.run_cells(bench.Run("Lookup", "envfb_sd", 0), cells.append)
    assert [c["snapshot_turns"] for c in cells] == [first, first]
    assert len(evaluated) == 1 and cells[1]["eval_seconds"] == 0.0
    assert cells[1]["per_task"] == cells[0]["per_task"]
