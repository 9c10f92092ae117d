"""``benchmarks/run_all.py --quick``: the whole matrix on a tiny model, and what it writes."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METHODS = {"base", "grpo", "envfb_sd", "full_demo", "hero"}
ENVS = {"TauRetail", "TauAirline", "WebShop"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_quick_run_writes_every_output(quick_run):
    out, proc = quick_run
    for name in ("results.json", "results.csv", "results.md", "success_vs_budget.png", "turns_vs_budget.png",
                 "training_curves.png", "options.json"):
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((out / "results.json").read_text())
    cells = data["cells"]
    assert {c["env"] for c in cells} == ENVS
    assert {c["method"] for c in cells} == METHODS
    budgets = {c["budget"] for c in cells if c["method"] != "base"}
    assert budgets == {4, 8}
    for c in cells:
        assert 0.0 <= c["success_rate"] <= 1.0 and c["mean_turns"] >= 1
        assert c["n_eval_episodes"] > 0
        cdir = out / "cells" / f"{c['env']}__{c['method']}__b{c['budget']}__s{c['seed']}"
        assert (cdir / "eval_episodes.jsonl").exists()
        if c["method"] != "base":
            # training really spent its turn budget (the last update may overshoot by one batch)
            assert c["turns_used"] >= c["budget"] and c["updates"] >= 1
            assert (cdir / "train" / "episodes.jsonl").exists()
        if c["env"].startswith("Tau"):
            assert c["pass^1"] is not None

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(cells)
    table = (out / "results.md").read_text()
    for label in ("HERO", "GRPO", "env-feedback SD", "full-demo teacher", "untrained base"):
        assert label in table
    assert "| env | method | budget | success %" in table
    assert "results.md" not in proc.stderr  # no traceback mentioning outputs


def test_rerun_skips_finished_cells(quick_run):
    out, _ = quick_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/result.json")}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
