"""Rebuild a preset's CPU warm start and ship its adapter with the package.

    python benchmarks/ship_warmstart.py [--preset default] [--env WebShop]

Trains the warm start exactly as ``make bench`` would build it (the preset's warm-start settings and the
benchmark's env settings for that env; shipped adapters are ignored, so it always trains), then copies its
float16 LoRA adapter and ``warmstart.json`` to ``agents/warmstart_adapters/<key>/`` with this command recorded.
``tests/agents/test_warmstart_shipped.py`` checks that the preset's key has a shipped adapter and that it loads.
Run it after any change to the warm-start recipe or the preset's settings (the key changes with them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default", help="the benchmark preset whose warm start to rebuild")
    ap.add_argument("--env", default="WebShop", help="the env of that preset (default WebShop)")
    a = ap.parse_args(argv)
    os.environ["HERO_GYM_WARMSTART_SHIPPED"] = "0"   # train, even when an adapter with this key is shipped
    from hero_gym.agents import bench
    from hero_gym.agents import warmstart_files as files

    opts = bench.parse_args(["--preset", a.preset])
    if a.env not in opts.envs or not opts.warm_start:
        raise SystemExit(f"the {a.preset} preset has no warm start for {a.env}")
    b = bench.Bench(opts, Path(tempfile.mkdtemp(prefix="ship-warmstart-")), log=print)
    t0 = time.perf_counter()
    b.source.base(b.setups[a.env])
    path = Path(b.source.warm_start_info[a.env]["path"])
    command = f"python benchmarks/ship_warmstart.py --preset {a.preset} --env {a.env}"
    dest = files.ship(path, command=command)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"built {path} in {time.perf_counter() - t0:.0f} s; shipped {dest} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return dest


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("ship_warmstart.py: interrupted; the warm start keeps its checkpoint: run the same command again "
              "to continue", file=sys.stderr)
        sys.exit(130)
