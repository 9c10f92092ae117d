"""Keep a long benchmark run's finished work in the repository, and put it back on a fresh machine.

    python benchmarks/sync_cells.py save    RUN_OUT  DEST     # e.g. /work/cpulong-out docs/results/cpu-long
    python benchmarks/sync_cells.py restore DEST     RUN_OUT

``save`` copies what a finished cell and a finished training run consist of, never the weight snapshots
or resume checkpoints: per cell ``result.json`` and its evaluation episodes (gzipped), per run
``run.json`` and the trainer's ``metrics.jsonl``, and the run's ``provenance.json``. Nothing in DEST is
deleted or overwritten by a different file without saying so: a cell whose fingerprint differs from the
saved one is kept aside under ``DEST/stale/``.

``restore`` copies the saved cells (and the records of runs whose every saved cell is there) into a run
folder that lacks them, so a rerun of the same commit with the same ``--out`` reuses every finished cell
(the bench reuses a cell whose fingerprint matches). A training run that was interrupted mid-way
resumes only from its own checkpoint, which ``save`` does not keep: on a fresh machine it starts again.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from pathlib import Path


def _fingerprint(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (OSError, json.JSONDecodeError):
        return None


def _put(src_bytes: bytes, dest: Path, stale_root: Path, name: str, fingerprint: str | None) -> str:
    """Write ``dest`` unless an equal file is there; a different one with another fingerprint goes to stale."""
    if dest.exists():
        if dest.read_bytes() == src_bytes:
            return "same"
        old = _fingerprint(dest) if dest.suffix == ".json" else None
        if old is not None and old != fingerprint:
            aside = stale_root / f"{name}__{old}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(dest.parent), str(aside))
            dest.parent.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(src_bytes)
    return "written"


def save(run_out: Path, dest: Path) -> dict[str, int]:
    """Copy finished cells and run records from ``run_out`` into ``dest``; returns counts."""
    counts = {"cells": 0, "runs": 0, "written": 0}
    for res in sorted(run_out.glob("cells/*/result.json")):
        name = res.parent.name
        fp = _fingerprint(res)
        counts["written"] += _put(res.read_bytes(), dest / "cells" / name / "result.json", dest / "stale" / "cells",
                                  name, fp) == "written"
        eps = res.parent / "eval_episodes.jsonl"
        if eps.exists():
            target = dest / "cells" / name / "eval_episodes.jsonl.gz"
            data = eps.read_bytes()
            if not target.exists() or gzip.decompress(target.read_bytes()) != data:
                target.write_bytes(gzip.compress(data, mtime=0))
                counts["written"] += 1
        counts["cells"] += 1
    for meta in sorted(run_out.glob("runs/*/run.json")):
        name = meta.parent.name
        fp = _fingerprint(meta)
        counts["written"] += _put(meta.read_bytes(), dest / "runs" / name / "run.json", dest / "stale" / "runs",
                                  name, fp) == "written"
        metrics = meta.parent / "train" / "metrics.jsonl"
        if metrics.exists():
            counts["written"] += _put(metrics.read_bytes(), dest / "runs" / name / "metrics.jsonl",
                                      dest / "stale" / "runs", name, fp) == "written"
        counts["runs"] += 1
    prov = run_out / "provenance.json"
    if prov.exists():
        (dest / "provenance.json").write_bytes(prov.read_bytes())
    return counts


def restore(dest: Path, run_out: Path) -> dict[str, int]:
    """Copy saved cells (and run records whose cells are all saved) into ``run_out`` where missing."""
    counts = {"cells": 0, "runs": 0}
    saved_cells = {p.parent.name for p in dest.glob("cells/*/result.json")}
    for name in sorted(saved_cells):
        target = run_out / "cells" / name
        if (target / "result.json").exists():
            continue
        target.mkdir(parents=True, exist_ok=True)
        gz = dest / "cells" / name / "eval_episodes.jsonl.gz"
        if gz.exists():
            (target / "eval_episodes.jsonl").write_bytes(gzip.decompress(gz.read_bytes()))
        # result.json last: a cell is finished when it is there
        (target / "result.json").write_bytes((dest / "cells" / name / "result.json").read_bytes())
        counts["cells"] += 1
    prov = dest / "provenance.json"
    budgets = json.loads(prov.read_text())["options"]["budgets"] if prov.exists() else None
    for meta in sorted(dest.glob("runs/*/run.json")):
        # a run's record only with every one of its budgets' cells: a run record without its snapshots
        # would stop the bench from training the missing budget (it would look for a snapshot)
        name = meta.parent.name   # <env>__<method>__s<seed>: its cells are <env>__<method>__b<B>__s<seed>
        env, method, seed = name.rsplit("__", 2)
        target = run_out / "runs" / name / "run.json"
        if budgets is None or target.exists() or not all(
                f"{env}__{method}__b{b}__{seed}" in saved_cells for b in budgets):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(meta.read_bytes())
        (target.parent / "fingerprint").write_text(_fingerprint(meta) or "")
        counts["runs"] += 1
    if prov.exists() and not (run_out / "provenance.json").exists():
        run_out.mkdir(parents=True, exist_ok=True)
        (run_out / "provenance.json").write_bytes(prov.read_bytes())
    return counts


def main(argv: list[str] | None = None) -> dict[str, int]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["save", "restore"])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    a = ap.parse_args(argv)
    if not a.src.is_dir():
        ap.error(f"{a.src} is not a folder")
    counts = save(a.src, a.dst) if a.action == "save" else restore(a.src, a.dst)
    print(f"{a.action}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    main()
