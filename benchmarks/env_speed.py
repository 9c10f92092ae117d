"""Environment speed: Tau-bench and WebShop rows, printed as a table (and JSON with --json).

    python benchmarks/env_speed.py [--only tau|webshop] [--json out.json]

Each domain's module (``tau_speed.py``, ``webshop_speed.py``) measures its own rows, including the
straightforward baseline it is compared with, in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def collect(only: str | None = None) -> list[dict]:
    rows: list[dict] = []
    if only in (None, "tau"):
        import tau_speed

        rows += [{"domain": "tau", **r} for r in tau_speed.main_rows()]
    if only in (None, "webshop"):
        import webshop_speed

        rows += [{"domain": "webshop", **r} for r in webshop_speed.main_rows()]
    return rows


def _num(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if v < 1000 else f"{v:,.0f}"
    return str(v)


def print_table(rows: list[dict]) -> None:
    """One line per row: name, p50 / p95 (ms), the baseline and speed-up where measured, the target."""
    width = max(len(r["benchmark"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'p50 ms':>9} {'p95 ms':>9} {'baseline p50':>12} {'speedup':>8} {'target ms':>9}  n")
    for r in rows:
        p50 = f"{r['mb_per_env']:.3g} MB" if r.get("mb_per_env") is not None else _num(r.get("p50_ms"))
        print(f"{r['benchmark']:<{width}}  {p50:>9} {_num(r.get('p95_ms')):>9} {_num(r.get('baseline_p50_ms')):>12} "
              f"{_num(r.get('speedup')):>8} {_num(r.get('target_ms')):>9}  {r.get('n', '')}")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tau", "webshop"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = collect(args.only)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
