"""Add a run's 1-min load average to its probe.json and re-render probe.md from it (the summary is unchanged).

    python docs/results/probe/add_load.py RUN_DIR LOAD_LOG HH:MM:SS HH:MM:SS

``LOAD_LOG`` holds lines ``HH:MM:SS load1 load5 load15`` sampled every 30 s during the run (UTC); the lines
inside the window give the start, end and mean 1-min load average. Used for the two 40-episode runs, which
started before the probe recorded its own load average (``meta["load_average"]``).
"""

import json
import sys
from pathlib import Path

from hero_gym.agents.probe_report import markdown


def main(out: str, log: str, t0: str, t1: str) -> None:
    run = Path(out)
    loads = [float(line.split()[1]) for line in open(log) if t0 <= line.split()[0] <= t1]
    if not loads:
        raise SystemExit(f"no load samples between {t0} and {t1} in {log}")
    data = json.loads((run / "probe.json").read_text())
    data["meta"]["load_average"] = [loads[0], loads[-1]]
    data["meta"]["load_average_mean"] = round(sum(loads) / len(loads), 2)
    (run / "probe.json").write_text(json.dumps(data, indent=1, default=str))
    (run / "probe.md").write_text(markdown(data["summary"], data["meta"], level=1))
    print(f"{len(loads)} samples: start {loads[0]}, end {loads[-1]}, mean {data['meta']['load_average_mean']}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
