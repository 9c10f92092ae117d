"""``benchmarks/run_all.py --quick`` end to end (tiny model): outputs, provenance, progress, reuse, report-only."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "run_all.py"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=1200, cwd=cwd)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    proc = _run("--quick", "--out", "relative_out", cwd=cwd)   # --out resolves against the cwd
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return cwd / "relative_out", proc


def test_quick_run_writes_every_output(quick_run):
    from hero_gym.agents.bench import available_methods

    out, proc = quick_run
    data = json.loads((out / "results.json").read_text())
    cells, prov = data["cells"], data["provenance"]
    envs = set(prov["options"]["envs"])
    for name in ["results.json", "results.csv", "results.md", *(f"curves_{e}.png" for e in envs)]:
        assert (out / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert {c["env"] for c in cells} == envs
    assert {c["method"] for c in cells} == set(available_methods())
    # the Mechanism section: the probe on each env's base model, its files under mechanism/<env>/
    assert "## Mechanism" in (out / "results.md").read_text()
    for e in envs:
        assert (out / "mechanism" / e / "probe.json").exists() and (out / "mechanism" / e / "delta.png").exists()
    budgets = prov["options"]["budgets"]
    for c in cells:
        assert 0.0 <= c["success_rate"] <= 1.0 and c["mean_turns"] >= 1 and c["n_eval_episodes"] > 0
        assert len(c["per_task"]) == c["n_eval_episodes"]
        if c["method"] != "base":
            # the model at budget B: the first snapshot at or past B (the top budget: the run's last batch)
            assert c["budget"] in budgets and c["snapshot_turns"] >= c["budget"]
            assert c["tokens_trained"] >= 0 and c["scored_turns"] >= 0
    # one training run per (env, method, seed), its snapshots read at every budget
    runs = list((out / "runs").glob("*/run.json"))
    assert len(runs) == len(envs) * (len(available_methods()) - 1) * len(prov["options"]["seeds"])
    # paired comparisons of the reference with every other method at every budget
    ref = prov["options"]["reference"]
    comps = data["comparisons"]
    assert {(c["env"], c["budget"], c["other"]) for c in comps} == {
        (e, b, m) for e in envs for b in budgets for m in available_methods() if m != ref}
    for c in comps:
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]
    # provenance
    for key in ("git_commit", "hardware", "wall_seconds", "code_fingerprint", "command"):
        assert prov[key] not in (None, "")
    for e in envs:
        assert prov["envs"][e]["data"]["source"] in ("official", "generated") and prov["envs"][e]["data"]["fingerprint"]

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(cells)
    table = (out / "results.md").read_text()
    for label in ("HERO", "GRPO", "Env-feedback SD", "Full-demo (successful rollout, else expert demonstration)",
                  "HERO (rules)", "HERO (rules, shuffled diagnoses)", "Base"):
        assert f"| {label} |" in table
    assert "tokens trained" in table and "Holm" in table and "goals as clusters" in table
    assert "no difference detected" in table and "(reference)" in table and "Model: `tiny`" in table
    # per-step progress lines with the matrix position and an ETA, also when stdout is not a terminal
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[") and "ETA" in ln]
    assert any("trained " in ln for ln in lines) and any("budget" in ln for ln in lines)


def test_rerun_reuses_cells_and_keeps_wall_time(quick_run):
    out, _ = quick_run
    before = json.loads((out / "results.json").read_text())["provenance"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")}
    proc = _run("--quick", "--out", str(out), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert f"{len(stamps)} cells reused from {out}" in proc.stdout
    after = json.loads((out / "results.json").read_text())["provenance"]
    assert after["reused_cells"] == len(stamps)
    assert after["wall_seconds"] == pytest.approx(before["wall_seconds"])
    assert "cells reused from" in (out / "results.md").read_text()


def test_workers_give_the_sequential_cells(quick_run, tmp_path):
    """``--workers 2`` runs the same jobs in two processes: every cell equals the one-process run's, and
    a one-process rerun over its folder reuses every cell (same fingerprints whichever process made them)."""
    seq_out, _ = quick_run
    out = tmp_path / "par"
    proc = _run("--quick", "--workers", "2", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "on 2 workers" in proc.stdout and any("trained " in ln for ln in proc.stdout.splitlines())
    keys = ("success_rate", "mean_score", "mean_turns", "valid_action_rate", "optimizer_steps", "snapshot_turns",
            "fingerprint")

    def cells(folder):
        return {p.parent.name: {k: json.loads(p.read_text()).get(k) for k in keys}
                for p in (folder / "cells").glob("*/result.json")}

    assert cells(out) == cells(seq_out)
    rerun = _run("--quick", "--out", str(out), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(cells(out))} cells reused from {out}" in rerun.stdout


def test_report_only_rebuilds(quick_run):
    out, _ = quick_run
    (out / "results.md").unlink()
    proc = _run("--report-only", "--out", str(out), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "results.md").exists() and "report rebuilt from" in proc.stdout
    assert "**Partial**" not in (out / "results.md").read_text()   # a finished run's report is not partial


def test_report_only_on_an_empty_folder_is_one_clear_error(tmp_path):
    proc = _run("--report-only", "--out", str(tmp_path / "missing"), cwd=tmp_path)
    assert proc.returncode != 0 and "no finished cells" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "missing").exists()


def test_quick_with_warm_start(tmp_path):
    """``--warm-start`` builds (or reads from the cache) the behaviour-cloned base and starts every run from it."""
    pytest.importorskip("hero_gym.agents.warmstart")
    # two workers: the warm start is built in the main process, the workers load it from the cache
    proc = _run("--quick", "--warm-start", "--envs", "Lookup", "--methods", "hero_rules", "--seeds", "0",
                "--budgets", "6", "--workers", "2", "--out", str(tmp_path / "ws"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    data = json.loads((tmp_path / "ws" / "results.json").read_text())
    ws = data["provenance"]["warm_start"]["Lookup"]
    # the provenance written for an interrupted run's report names the warm start too
    assert json.loads((tmp_path / "ws" / "provenance.json").read_text())["warm_start"]["Lookup"]["path"] == ws["path"]
    assert ws["path"] and Path(ws["path"]).is_dir() and ws["config"]["env_id"] == "hero_gym/Lookup-v0"
    assert "| Warm-started base |" in (tmp_path / "ws" / "results.md").read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_prints_one_line_and_keeps_finished_cells(tmp_path, workers):
    """SIGINT (Ctrl-C) once a cell has finished: exit 130, one line on stderr after the progress output and
    no traceback (from the main process or a worker); the finished cells stay for the rerun to reuse."""
    import os
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--workers", workers, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True,
                            # a shell without job control starts background jobs with SIGINT ignored, and
                            # Python keeps an ignored SIGINT: give the run the terminal's default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not list(out.glob("cells/*/result.json")):
        time.sleep(0.5)
    assert proc.poll() is None, "the run ended before a cell finished"
    os.killpg(proc.pid, signal.SIGINT)          # the terminal sends it to the whole process group
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("run_all.py: interrupted; finished cells stay")
    assert list(out.glob("cells/*/result.json"))
    # the interrupted run is reported from the provenance it wrote at its start, marked partial
    assert not (out / "results.json").exists() and (out / "provenance.json").exists()
    for _ in range(2):   # the second report reads the partial results.json the first wrote: still partial
        rep = _run("--report-only", "--out", str(out), cwd=tmp_path)
        assert rep.returncode == 0, rep.stderr[-3000:]
        assert "**Partial**" in (out / "results.md").read_text()
