"""Environment speed: Tau-bench and WebShop rows, printed as a table (and JSON with --json).

    python benchmarks/env_speed.py [--only tau|webshop] [--json out.json]

Each domain's module (``speed_tau.py``, ``speed_webshop.py``) measures its own rows, including the
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
        import speed_tau

        rows += [{"domain": "tau", **r} for r in speed_tau.main_rows()]
    if only in (None, "webshop"):
        import speed_webshop

        rows += [{"domain": "webshop", **r} for r in speed_webshop.main_rows()]
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    table = Table(title="Environment speed")
    for k in keys:
        table.add_column(k)
    for r in rows:
        table.add_row(*[f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys])
    Console().print(table)


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
