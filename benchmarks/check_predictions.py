"""Which of the long CPU experiment's written predictions held (docs/results/cpu-long/PREDICTION.md).

    python benchmarks/check_predictions.py docs/results/cpu-long [--bootstrap 2000] [--out FILE]

Reads the finished cells (``cells/*/result.json``) and compares methods pairwise on the same goals and
seeds with the benchmark's goal-clustered paired bootstrap (:func:`hero_gym.agents.bench.stats.compare`):
success, mean score, valid-action rate and redundant turns per goal. Each prediction is one comparison in
one direction (or "not above" / "not below" / "no difference"); its verdict is **held** (the 95% CI
excludes 0 in the predicted direction, or does not contradict a "not above"), **contradicted** (it
excludes 0 in the other direction) or **no difference detected**. Works on a partial
run: a comparison without cells on both sides is reported as not yet measurable.

A second table reads the HERO paper's own claims the same way (:data:`PAPER_CLAIMS`): HERO above env-feedback
SD above GRPO at the small budget, fewer unnecessary turns, and the shuffled ablation falling to env-feedback
SD's level. A claim tied to the small budget is read at the smallest trained budget only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hero_gym.agents.bench.stats import compare

#: (id, text, a, b, metric, claim) about "a - b": ``">"`` / ``"<"`` (the CI must exclude 0 that way),
#: ``"not >"`` / ``"not <"`` (contradicted only by a CI excluding 0 the other way), ``"="`` (held while the
#: CI includes 0)
PREDICTIONS = [
    ("1a", "HERO (rules) above env-feedback SD in valid-action rate", "hero_rules", "envfb_sd", "valid_rate", ">"),
    ("1b", "HERO (rules) above env-feedback SD in success", "hero_rules", "envfb_sd", "success", ">"),
    ("1c", "env-feedback SD below the warm-started base in valid-action rate", "envfb_sd", "base", "valid_rate", "<"),
    ("2a", "HERO (rules, shuffled) not above HERO (rules) in success", "hero_rules_shuffled", "hero_rules",
     "success", "not >"),
    ("2b", "HERO (rules, shuffled) not above env-feedback SD in success", "hero_rules_shuffled", "envfb_sd",
     "success", "not >"),
    ("3", "the ceiling (oracle targets) not below HERO (rules) in success", "hero_rules_oracle", "hero_rules",
     "success", "not <"),
    ("4a", "GRPO moves little from the base (success)", "grpo", "base", "success", "="),
    ("4b", "GRPO moves little from the base (mean score)", "grpo", "base", "score", "="),
    ("4c", "GRPO moves little from the base (valid-action rate)", "grpo", "base", "valid_rate", "="),
    ("5", "HERO (rules) fewer redundant turns than env-feedback SD", "hero_rules", "envfb_sd", "redundant_turns", "<"),
]

#: The HERO paper's claims, as (id, text, a, b, metric, claim, small budget only)
PAPER_CLAIMS = [
    ("P1", "HERO above env-feedback SD in success at the small budget", "hero_rules", "envfb_sd", "success", ">", True),
    ("P2", "env-feedback SD above GRPO in success at the small budget", "envfb_sd", "grpo", "success", ">", True),
    ("P3a", "HERO fewer unnecessary (redundant) turns than env-feedback SD", "hero_rules", "envfb_sd",
     "redundant_turns", "<", False),
    ("P3b", "HERO fewer unnecessary (redundant) turns than GRPO", "hero_rules", "grpo", "redundant_turns", "<", False),
    ("P4a", "shuffled diagnoses fall to env-feedback SD's level in success", "hero_rules_shuffled", "envfb_sd",
     "success", "=", False),
    ("P4b", "shuffled diagnoses below HERO in success", "hero_rules_shuffled", "hero_rules", "success", "<", False),
]


def _with_valid_rate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in cells:
        c = dict(c)
        c["per_task"] = [{**r, "valid_rate": r["valid_turns"] / r["turns"] if r.get("turns") else 0.0}
                         for r in c["per_task"]]
        out.append(c)
    return out


def verdict(low: float, high: float, claim: str) -> str:
    """The verdict of ``claim`` about a difference whose 95% CI is ``[low, high]``."""
    above, below = low > 0.0, high < 0.0
    if claim == ">":
        return "held" if above else "contradicted" if below else "no difference detected"
    if claim == "<":
        return "held" if below else "contradicted" if above else "no difference detected"
    if claim == "not >":
        return "contradicted" if above else "held" + ("" if below else " (no difference detected)")
    if claim == "not <":
        return "contradicted" if below else "held" + ("" if above else " (no difference detected)")
    if claim == "=":
        return "held (no difference detected)" if not (above or below) else "contradicted (a difference)"
    raise ValueError(f"unknown claim {claim!r}")


def check(folder: Path, n_boot: int = 2000, claims: list[tuple[Any, ...]] | None = None) -> list[dict[str, Any]]:
    """One row per (claim, budget): ``claims`` are :data:`PREDICTIONS` (the default) or :data:`PAPER_CLAIMS`."""
    cells = _with_valid_rate([json.loads(f.read_text()) for f in sorted(folder.glob("cells/*/result.json"))])
    seeds = sorted({c["seed"] for c in cells if c["seed"] is not None})
    trained = sorted({c["budget"] for c in cells if c["method"] != "base"})
    rows = []
    for pid, text, a, b, metric, claim, *small in (PREDICTIONS if claims is None else claims):
        # compare() takes the reference's budgets; the base stands at every budget
        sub = [c for c in cells if c["method"] in (a, b)]
        comps = [x for x in compare(sub, a, seeds, n_boot, metrics=[metric]) if x["other"] == b] if sub else []
        if small and small[0]:
            comps = [x for x in comps if trained and x["budget"] == trained[0]]
        if not comps:
            rows.append({"id": pid, "prediction": text, "budget": None, "verdict": "not measurable yet"})
        for x in comps:
            rows.append({"id": pid, "prediction": text, "budget": x["budget"], "metric": metric,
                         "diff": x["diff"], "ci": [x["ci_low"], x["ci_high"]], "pairs": x["pairs"],
                         "goals": x["goals"], "seeds": x["seeds"], "verdict": verdict(x["ci_low"], x["ci_high"], claim)})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| # | prediction | budget | difference [95% CI] | pairs (goals, seeds) | verdict |", "|---|---|---:|---|---|---|"]
    for r in rows:
        if r["budget"] is None:
            lines.append(f"| {r['id']} | {r['prediction']} | – | – | – | {r['verdict']} |")
            continue
        scale = 100 if r["metric"] in ("success", "valid_rate") else 1
        unit = " pp" if scale == 100 else ""
        lo, hi = (v * scale for v in r["ci"])
        nd = 1 if scale == 100 else 2
        lines.append(f"| {r['id']} | {r['prediction']} | {r['budget']} | {r['diff'] * scale:+.{nd}f}{unit} "
                     f"[{lo:+.{nd}f}, {hi:+.{nd}f}] | {r['pairs']} ({r['goals']}, {r['seeds']}) | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a benchmark output folder (cells/*/result.json)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    a = ap.parse_args(argv)
    if not any(a.folder.glob("cells/*/result.json")):
        ap.error(f"no finished cells under {a.folder}/cells")
    rows = check(a.folder, a.bootstrap)
    paper = check(a.folder, a.bootstrap, PAPER_CLAIMS)
    text = (markdown(rows) + "\n### The HERO paper's claims, read the same way\n\n" + markdown(paper)
            .replace("| prediction |", "| claim |", 1))
    print(text)
    if a.out:
        a.out.write_text(text)
    return rows + paper


if __name__ == "__main__":
    main()
