"""benchmarks/sync_cells.py: a long run's finished cells saved into the repository and restored so that a
rerun of the same commit reuses them (the bench's own reuse check, on a real quick run)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import sync_cells  # noqa: E402

ARGS = ["--quick", "--envs", "Lookup", "--methods", "hero_rules", "--seeds", "0", "--budgets", "6", "12"]


def _bench(*args, cwd):
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), *ARGS, *args],
                          capture_output=True, text=True, timeout=900, cwd=cwd)


def test_save_then_restore_lets_a_rerun_reuse_every_cell(tmp_path):
    out, dest, fresh = tmp_path / "out", tmp_path / "docs", tmp_path / "fresh"
    proc = _bench("--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = sync_cells.save(out, dest)
    assert counts["cells"] == 3 and counts["runs"] == 1
    assert not list(dest.rglob("*.pt")) and not list(dest.rglob("snapshots"))    # no weights kept
    assert sync_cells.save(out, dest)["written"] == 0                             # idempotent
    assert sync_cells.restore(dest, fresh) == {"cells": 3, "runs": 1}
    again = _bench("--out", str(fresh), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 cells reused" in again.stdout and "trained Lookup__hero_rules__s0" not in again.stdout
    # control: without the restored cells the same command trains again
    shutil.rmtree(fresh / "cells")
    shutil.rmtree(fresh / "runs")
    third = _bench("--out", str(fresh), cwd=tmp_path)
    assert "cells reused" not in third.stdout and "trained Lookup__hero_rules__s0" in third.stdout


def test_a_cell_from_other_code_is_kept_aside_not_overwritten(tmp_path):
    out, dest = tmp_path / "out", tmp_path / "docs"
    cell = out / "cells" / "E__m__b6__s0"
    cell.mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps({"fingerprint": "new"}))
    saved = dest / "cells" / "E__m__b6__s0"
    saved.mkdir(parents=True)
    (saved / "result.json").write_text(json.dumps({"fingerprint": "old"}))
    sync_cells.save(out, dest)
    assert json.loads((saved / "result.json").read_text())["fingerprint"] == "new"
    assert json.loads((dest / "stale" / "cells" / "E__m__b6__s0__old" / "result.json").read_text()) == {"fingerprint": "old"}
