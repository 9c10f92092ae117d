"""Compare a probe run (probe.json) with the issue-22 pilot's figures on the same WebShop setting.

    python docs/results/probe/compare_pilot.py docs/results/probe/webshop_pilot/probe.json

"Reproduced" = the run's point estimate lies inside the pilot's 95% CI (where the pilot gave one), and
the run's CI overlaps it; figures the pilot gave without a CI are shown for reference only.

The pilot's "HERO (rules)" note quoted the env's error message: today's ``note_style="legacy"``. A run with
``--note-styles legacy`` has that row as ``hero_rules:legacy``, and it is the one compared (the row label
says so); older runs (before the note styles) compare their ``hero_rules`` row.
"""

import json
import os
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
# Δ log p(a_t) on a mistake's first occurrence in the episode (invalid and valid-but-wrong turns together)
PILOT_FIRST = {"envfb_sd": (6.2, 4.5, 7.8), "hero_rules": (7.0, None, None)}


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
    legacy = "hero_rules:legacy" in s["rows"]

    def row_of(row):
        return "hero_rules:legacy" if legacy and row == "hero_rules" else row

    print("| note | measure | pilot | this run | verdict |\n|---|---|---|---|---|")
    for (row, metric), p in PILOT.items():
        run = s["rows"].get(row_of(row), {}).get(metric)
        ps = f"{p[0]:+.2f}" + (f" [{p[1]:+.2f}, {p[2]:+.2f}]" if p[1] is not None else "")
        print(f"| {row_of(row)} | {metric} | {ps} | {fmt(run)} | {verdict(run, p)} |")
    for (pair, metric), p in PILOT_PAIRED.items():
        pair = pair.replace("hero_rules ", row_of("hero_rules") + " ")
        run = s["paired"].get(pair, {}).get(metric)
        print(f"| {pair} | {metric} | {p[0]:+.2f} [{p[1]:+.2f}, {p[2]:+.2f}] | {fmt(run)} | {verdict(run, p)} |")
    csv_path = os.path.join(os.path.dirname(path), "turns.csv")
    if os.path.exists(csv_path):
        for row, p in PILOT_FIRST.items():
            run = first_occurrence(csv_path, row_of(row))
            ps = f"{p[0]:+.2f}" + (f" [{p[1]:+.2f}, {p[2]:+.2f}]" if p[1] is not None else "")
            print(f"| {row_of(row)} | d_wrong, first occurrence | {ps} | {fmt(run)} | {verdict(run, p)} |")


def first_occurrence(turns_csv, row, n_boot=2000):
    """Δ log p(a_t) over wrong turns (invalid + valid but wrong) that are the first occurrence of their action in
    the episode, from the run's turns.csv, with the probe's episode-clustered bootstrap."""
    import csv

    from hero_gym.agents.probe_stats import cluster_bootstrap_mean

    vals, cl = [], []
    with open(turns_csv) as f:
        for r in csv.DictReader(f):
            v = r.get(f"{row}:d_action", "")
            if r["kind"] in ("invalid", "wrong") and r["first"] == "True" and v != "":
                vals.append(float(v))
                cl.append(r["episode"])
    return cluster_bootstrap_mean(vals, cl, n_boot=n_boot).to_dict()


if __name__ == "__main__":
    main(sys.argv[1])
