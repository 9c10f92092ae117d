"""The HERO benchmark from a source checkout: ``python benchmarks/run_all.py [options]``.

The protocol lives in :mod:`hero_gym.agents.bench` (so ``hero-gym bench`` works from an installed
package); this script adds ``--speed``, which also runs the speed scripts next to it.
See ``python benchmarks/run_all.py --help``. Ctrl-C stops it with one line: finished cells stay in ``--out``
and an interrupted warm start keeps its checkpoint, so the same command continues where it stopped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hero_gym.agents import bench


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = bench.build_parser(prog="benchmarks/run_all.py")
    parser.add_argument("--speed", action="store_true", help="afterwards run env_speed.py and trainer_speed.py")
    args = list(sys.argv[1:] if argv is None else argv)
    speed = parser.parse_args(args).speed
    result = bench.main([a for a in args if a != "--speed"])
    if speed:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import env_speed
        import trainer_speed

        env_speed.main([])
        trainer_speed.main([])
    return result


INTERRUPTED = ("run_all.py: interrupted; finished cells stay in the output folder and the warm start keeps its "
               "checkpoint: run the same command again to continue")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
