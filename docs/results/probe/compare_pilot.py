"""Compare a probe run (probe.json) with the issue-22 pilot's figures on the same WebShop setting.

    python docs/results/probe/compare_pilot.py docs/results/probe/webshop_pilot/probe.json

"Reproduced" = the run's point estimate lies inside the pilot's 95% CI (where the pilot gave one), and
the run's CI overlaps it; figures the pilot gave without a CI are shown for reference only.
"""

import json
import sys

# (row, metric) -> (pilot value, pilot lo, pilot hi); None bounds = the pilot gave no CI
PILOT = {
    ("envfb_sd", "d_wrong"): (3.6, 2.6, 4.8), ("envfb_sd", "d_oracle"): (0.2, -0.1, 0.6),
    ("envfb_sd", "d_right"): (-2.2, -2.6, -1.8), ("envfb_sd", "auc"): (0.06, None, None),
    ("hero_rules", "d_wrong"): (3.9, 2.8, 5.2), ("hero_rules", "d_oracle"): (0.5, 0.2, 0.9),
    ("hero_rules", "d_right"): (0.2, None, None), ("hero_rules", "auc"): (0.46, None, None),
    ("hero_rules_shuffled", "d_wrong"): (-3.6, None, None), ("hero_rules_shuffled", "d_oracle"): (-2.6, None, None),
    ("hero_rules_shuffled", "d_right"): (-5.3, None, None), ("hero_rules_shuffled", "auc"): (0.37, None, None),
    ("full_demo", "d_wrong"): (-4.6, None, None), ("full_demo", "d_oracle"): (2.7, 1.8, 3.5),
    ("full_demo", "d_right"): (-1.9, None, None), ("full_demo", "auc"): (0.60, None, None),
    ("oracle_target_json", "d_wrong"): (2.4, None, None), ("oracle_target_json", "d_oracle"): (2.7, None, None),
    ("oracle_target_json", "d_right"): (-0.8, None, None), ("oracle_target_json", "auc"): (0.41, None, None),
    ("oracle_target", "d_wrong"): (2.5, None, None), ("oracle_target", "d_oracle"): (5.7, 5.2, 6.4),
    ("oracle_target", "d_right"): (0.6, None, None), ("oracle_target", "auc"): (0.60, None, None),
}
PILOT_PAIRED = {("hero_rules - envfb_sd", "d_wrong"): (-0.10, -0.25, 0.02)}


def verdict(run, pilot):
    v, lo, hi = pilot
    if not run or not run.get("n"):
        return "no data"
    if lo is None:
        return "reference only (no pilot CI)"
    inside = lo <= run["value"] <= hi
    overlap = run["lo"] == run["lo"] and run["lo"] <= hi and run["hi"] >= lo
    return "reproduced" if inside and overlap else ("CIs overlap" if overlap else "NOT reproduced")


def fmt(d):
    if not d or not d.get("n"):
        return "—"
    s = f"{d['value']:+.2f}"
    return s + (f" [{d['lo']:+.2f}, {d['hi']:+.2f}]" if d["lo"] == d["lo"] else "") + f" (n={d['n']})"


def main(path):
    s = json.load(open(path))["summary"]
    print("| note | measure | pilot | this run | verdict |\n|---|---|---|---|---|")
    for (row, metric), p in PILOT.items():
        run = s["rows"].get(row, {}).get(metric)
        ps = f"{p[0]:+.2f}" + (f" [{p[1]:+.2f}, {p[2]:+.2f}]" if p[1] is not None else "")
        print(f"| {row} | {metric} | {ps} | {fmt(run)} | {verdict(run, p)} |")
    for (pair, metric), p in PILOT_PAIRED.items():
        run = s["paired"].get(pair, {}).get(metric)
        print(f"| {pair} | {metric} | {p[0]:+.2f} [{p[1]:+.2f}, {p[2]:+.2f}] | {fmt(run)} | {verdict(run, p)} |")


if __name__ == "__main__":
    main(sys.argv[1])
