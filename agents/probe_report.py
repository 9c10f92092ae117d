"""Tables, files and the benchmark's "Mechanism" section of the mechanism probe (:mod:`hero_gym.agents.probe`).

:func:`summarise` turns the per-turn records into metrics with episode-clustered bootstrap CIs;
:func:`write_outputs` writes ``probe.md``, ``turns.csv``, ``probe.json``, ``delta.png`` and ``examples.md``;
:func:`markdown` is the report text (also the benchmark's "Mechanism" section, :func:`mechanism_section`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .probe_stats import Estimate, cluster_bootstrap_auc, cluster_bootstrap_mean

__all__ = ["summarise", "markdown", "write_outputs", "mechanism_section", "CAVEAT"]

CAVEAT = ("Read with care: a_t was sampled from the student, so any note lowers it on average "
          "(E[Δ log p(a_t)] = −KL(student ‖ teacher) ≤ 0); the shuffled and context-free rows are the reference. "
          "Δ of the oracle action, the paired differences and the right-vs-wrong separation (AUC: 0.5 = none) "
          "are the usable measures.")
WRONG = ("invalid", "wrong")
PAIRS = [("hero_rules", "envfb_sd"), ("hero_rules", "hero_rules_shuffled"), ("hero", "envfb_sd"),
         ("hero", "hero_shuffled"), ("oracle_target", "oracle_target_json")]


def _est(turns: Sequence[dict], row: str, key: str, n_boot: int, seed: int, kinds: Sequence[str] = WRONG,
         cond: Any = None) -> Estimate:
    vals, cl = [], []
    for r in turns:
        cell = r["rows"].get(row)
        if cell is None or r["kind"] not in kinds or cell.get(key) is None or (cond is not None and not cond(r, cell)):
            continue
        vals.append(cell[key])
        cl.append(r["episode"])
    return cluster_bootstrap_mean(vals, cl, n_boot=n_boot, seed=seed)


def _paired(turns: Sequence[dict], a: str, b: str, key: str, n_boot: int, seed: int) -> Estimate:
    vals, cl = [], []
    for r in turns:
        x, y = r["rows"].get(a), r["rows"].get(b)
        if r["kind"] in WRONG and x is not None and y is not None and x.get(key) is not None and y.get(key) is not None:
            vals.append(x[key] - y[key])
            cl.append(r["episode"])
    return cluster_bootstrap_mean(vals, cl, n_boot=n_boot, seed=seed)


def _rate(turns: Sequence[dict], verdict_key: str, only: Any = None) -> dict[str, Any]:
    """Error-verdict precision / recall against the oracle (judged turns) and the target's exact-match rate."""
    judged = [r for r in turns if r["kind"] != "unjudged" and (only is None or only(r))]
    flagged = [r for r in judged if r[verdict_key] == "error"]
    wrong = [r for r in judged if r["kind"] in WRONG]
    tp = sum(r["kind"] in WRONG for r in flagged)
    tkey = verdict_key.replace("verdict", "target")
    with_target = [r for r in judged if r.get(tkey)]
    return {"judged_turns": len(judged), "flagged": len(flagged), "wrong": len(wrong), "true_positives": tp,
            "precision": tp / len(flagged) if flagged else None, "recall": tp / len(wrong) if wrong else None,
            "targets": len(with_target),
            "target_exact": (sum(r[tkey] == r["oracle"] for r in with_target) / len(with_target)) if with_target
            else None}


def summarise(turns: Sequence[dict], rows: Sequence[str], *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Every metric of the report (see :mod:`hero_gym.agents.probe`)."""
    counts = {k: sum(r["kind"] == k for r in turns) for k in ("invalid", "wrong", "right", "unjudged")}
    out: dict[str, Any] = {"turns": len(turns), "episodes": len({r["episode"] for r in turns}), "kinds": counts,
                           "rows": {}, "paired": {}, "by_kind": {}, "quotes": {}}
    for row in rows:
        cov = [r for r in turns if r["rows"].get(row) is not None]
        m: dict[str, Any] = {"covered": len(cov), "coverage": len(cov) / len(turns) if turns else None,
                             "covered_wrong": sum(r["kind"] in WRONG for r in cov),
                             "covered_right": sum(r["kind"] == "right" for r in cov)}
        for name, key, kinds in [("d_wrong", "d_action", WRONG), ("d_oracle", "d_oracle", WRONG),
                                 ("d_right", "d_action", ("right",)), ("d_wrong_tok", "d_action_tok", WRONG),
                                 ("d_oracle_tok", "d_oracle_tok", WRONG), ("d_right_tok", "d_action_tok", ("right",)),
                                 ("signal", "signal", ("invalid", "wrong", "right", "unjudged"))]:
            m[name] = _est(turns, row, key, n_boot, seed, kinds).to_dict()
        pos = [(r["rows"][row]["d_action"], r["episode"]) for r in cov if r["kind"] == "right"]
        neg = [(r["rows"][row]["d_action"], r["episode"]) for r in cov if r["kind"] in WRONG]
        m["auc"] = cluster_bootstrap_auc([p for p, _ in pos], [c for _, c in pos], [q for q, _ in neg],
                                         [c for _, c in neg], n_boot=n_boot, seed=seed).to_dict()
        out["rows"][row] = m
        out["by_kind"][row] = {f"{k}/{'first' if first else 'repeat'}": _est(
            turns, row, "d_action", n_boot, seed, (k,), lambda r, c, f=first: r["first"] == f).to_dict()
            for k in ("invalid", "wrong", "right") for first in (True, False)}
        out["quotes"][row] = {q: _est(turns, row, "d_action", n_boot, seed, WRONG,
                                      lambda r, c, q=q: c["quotes"] == (q == "quotes")).to_dict()
                              for q in ("quotes", "does_not_quote")}
    styles = [(r, "envfb_sd") for r in rows if r.startswith("hero_rules:")]   # HERO (rules) note-style variants vs env feedback
    for a, b in PAIRS + styles + [("full_demo", None)]:
        if a not in rows or (b is not None and b not in rows):
            continue
        if b is None:   # full demo - no note: the no-note Δ is 0 by definition
            out["paired"]["full_demo - no note"] = {"d_wrong": out["rows"][a]["d_wrong"],
                                                    "d_oracle": out["rows"][a]["d_oracle"]}
            continue
        out["paired"][f"{a} - {b}"] = {"d_wrong": _paired(turns, a, b, "d_action", n_boot, seed).to_dict(),
                                       "d_oracle": _paired(turns, a, b, "d_oracle", n_boot, seed).to_dict()}
    out["reflectors"] = {"rules": _rate(turns, "rule_verdict"),
                         "model": _rate(turns, "model_verdict", lambda r: r["model_reflected"])}
    out["reflectors"]["model"]["episodes"] = len({r["episode"] for r in turns if r["model_reflected"]})
    return out


def _f(d: dict | None, digits: int = 2, ci: bool = True) -> str:
    if not d:
        return "—"
    e = Estimate(d["value"], d["lo"], d["hi"], d["n"], d["clusters"])
    return e.fmt(digits, ci) + (f" (n={d['n']})" if d["n"] else "")


def _phases(meta: dict[str, Any]) -> str:
    """`` (rollouts 84 s, scoring 474 s, ...; load average 2.1 -> 3.0)`` from the run's timings, when recorded."""
    t = meta.get("timings") or {}
    parts = [f"{k} {t[k]:.0f} s" for k in ("rollouts", "notes", "reflect", "scoring", "statistics") if k in t]
    load = meta.get("load_average")
    if load:
        parts.append(f"1-min load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    return f" ({', '.join(parts)})" if parts else ""


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def markdown(summary: dict[str, Any], meta: dict[str, Any], *, title: str = "Mechanism probe", level: int = 2) -> str:
    """The report: main table, paired differences, turn kinds, quoting, reflector accuracy, provenance."""
    from .probe import ROW_LABELS

    h = "#" * level
    k = summary["kinds"]
    lines = [f"{h} {title}", "",
             f"{meta.get('env_id')} · model: {meta.get('model')} · {summary['episodes']} episodes, {summary['turns']} "
             f"turns ({k['invalid']} invalid, {k['wrong']} valid but wrong, {k['right']} right, {k['unjudged']} "
             f"unjudged) · sampled at T={meta.get('temperature')} on the {meta.get('split')} split · "
             f"{meta.get('seconds', 0):.0f} s on {meta.get('hardware', 'this machine')}{_phases(meta)}.", "",
             "Δ = log p_teacher(action | context + note) − log p_student(action | context), summed over the "
             "action's tokens; mean over turns, 95% CI from an episode-clustered bootstrap. Teacher = the "
             "student's weights (the EMA teacher at step 0).", "",
             "| note | coverage | Δ log p(wrong a_t) | Δ log p(oracle a*_t), wrong turns | Δ log p(right a_t) "
             "| AUC right > wrong | signal (JSD/token) |", "|---|---|---|---|---|---|---|"]
    for row, m in summary["rows"].items():
        lines.append(f"| {ROW_LABELS.get(row, row)} | {_pct(m['coverage'])} ({m['covered_wrong']} wrong, "
                     f"{m['covered_right']} right) | {_f(m['d_wrong'])} | {_f(m['d_oracle'])} | {_f(m['d_right'])} "
                     f"| {_f(m['auc'])} | {_f(m['signal'], 3)} |")
    lines += ["", CAVEAT, "", f"{h}# Paired differences (same wrong turns, episode-clustered CI)", "",
              "| difference | Δ wrong a_t | Δ oracle a*_t |", "|---|---|---|"]
    for name, d in summary["paired"].items():
        lines.append(f"| {name} | {_f(d['d_wrong'])} | {_f(d['d_oracle'])} |")
    lines += ["", "An interval that includes 0 says: no difference detected.", "",
              f"{h}# Δ log p(a_t) by turn kind (first occurrence of the action in the episode / repeat)", ""]
    kinds = list(next(iter(summary["by_kind"].values()), {}))
    lines += ["| note | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for row, d in summary["by_kind"].items():
        lines.append(f"| {ROW_LABELS.get(row, row)} | " + " | ".join(_f(d[c], 1) for c in kinds) + " |")
    lines += ["", f"{h}# Wrong turns: does the note quote the student's argument?", "",
              "| note | quotes it: Δ wrong a_t | does not: Δ wrong a_t |", "|---|---|---|"]
    for row, d in summary["quotes"].items():
        lines.append(f"| {ROW_LABELS.get(row, row)} | {_f(d['quotes'], 1)} | {_f(d['does_not_quote'], 1)} |")
    lines += ["", f"{h}# Reflector accuracy against the oracle", "",
              "Error verdict vs a_t ≠ a*_t on judged turns (rules: the verdict it writes; model: a target that "
              "differs from a_t), and the proposed target's exact-match rate with a*_t.", "",
              "| reflector | judged turns | flagged | precision | recall | targets | target = oracle |",
              "|---|---|---|---|---|---|---|"]
    for name, r in summary["reflectors"].items():
        extra = f" ({r['episodes']} episodes)" if name == "model" else ""
        lines.append(f"| {name}{extra} | {r['judged_turns']} | {r['flagged']} | {_pct(r['precision'])} | "
                     f"{_pct(r['recall'])} | {r['targets']} | {_pct(r['target_exact'])} |")
    if meta.get("oracle"):
        o = meta["oracle"]
        lines += ["", f"Oracle: {'available' if o.get('available') else 'none (oracle-free metrics only)'}"
                  + (f"; its own episodes from reset succeed on {_pct(o.get('demo_success_rate'))} of "
                     f"{o.get('demos')} tasks (the full-demo notes)." if o.get("demos") else ".")]
    return "\n".join(lines) + "\n"


def _examples(turns: Sequence[dict], rows: Sequence[str], notes_of: Any, n: int = 12) -> str:
    """A dozen turns (invalid, wrong, right in turn) with the action, the oracle's, each note and the Δs."""
    from .probe import ROW_LABELS

    picked: list[dict] = []
    pools = {k: [r for r in turns if r["kind"] == k] for k in ("invalid", "wrong", "right")}
    if not any(pools.values()):   # no oracle comparison possible (e.g. messages only): show unjudged turns
        pools["unjudged"] = [r for r in turns if r["kind"] == "unjudged"]
    while len(picked) < n and any(pools.values()):
        for k in pools:
            if pools[k] and len(picked) < n:
                picked.append(pools[k].pop(len(pools[k]) // 2))
    out = ["# Example turns", ""]
    for r in picked:
        out += [f"## Episode {r['episode']} turn {r['turn'] + 1}: {r['kind']}", "",
                f"- action: `{r['action_text'].strip()[:200]}`", f"- oracle: `{(r['oracle_text'] or '').strip()[:200]}`",
                f"- next observation: {r['observation'][:200]!r}", ""]
        for row in rows:
            cell = r["rows"].get(row)
            if cell is None:
                out.append(f"- **{ROW_LABELS.get(row, row)}**: masked")
                continue
            note = notes_of(row, r).replace("\n", " ⏎ ")
            d_o = "—" if cell["d_oracle"] is None else f"{cell['d_oracle']:+.2f}"
            out.append(f"- **{ROW_LABELS.get(row, row)}**: Δ a_t {cell['d_action']:+.2f}, Δ a*_t {d_o} — "
                       f"note: {note[:300]!r}")
        out.append("")
    return "\n".join(out)


def write_outputs(result: Any, summary: dict[str, Any], meta: dict[str, Any], notes: dict[str, Any] | None,
                  out: str | Path) -> Path:
    """Write ``probe.md``, ``turns.csv``, ``probe.json``, ``delta.png`` and ``examples.md`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes = notes if notes is not None else result.notes
    (out / "probe.md").write_text(markdown(summary, meta, level=1))
    (out / "probe.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=1, default=str))
    fields = ["episode", "turn", "task_id", "kind", "first", "action", "oracle", "rule_verdict", "model_verdict",
              "n_action_tokens", "n_oracle_tokens", "base_lp_action", "base_lp_oracle"]
    with (out / "turns.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields + [f"{row}:{k}" for row in result.rows for k in ("d_action", "d_oracle", "signal", "quotes")])
        for r in result.turns:
            cells = []
            for row in result.rows:
                c = r["rows"].get(row)
                cells += ["" if c is None else c[k] for k in ("d_action", "d_oracle", "signal", "quotes")]
            w.writerow([r.get(k) for k in fields] + cells)
    (out / "examples.md").write_text(_examples(result.turns, result.rows,
                                               lambda row, r: notes[row][r["episode"]][r["turn"]] or ""))
    _plot(summary, out / "delta.png", meta)
    return out


def plot_title(meta: dict[str, Any]) -> str:
    """The plot's provenance line: env, model, sampled episodes, split and temperature."""
    cfg = meta.get("config", {})
    return (f"{meta.get('env_id')} · model {meta.get('model')} · {cfg.get('episodes')} episodes, "
            f"{cfg.get('split')} split, T={meta.get('temperature')}")


def _plot(summary: dict[str, Any], path: Path, meta: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .probe import ROW_LABELS

    rows = list(summary["rows"])
    panels = [("d_wrong", "Δ log p(wrong a_t)"), ("d_oracle", "Δ log p(oracle a*_t), wrong turns"),
              ("d_right", "Δ log p(right a_t)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * len(rows) + 1.6), sharey=True)
    # one colour per row in every panel, whichever rows have turns of this kind: the default cycle up to
    # 10 rows, tab20's 20 colours beyond (rows past 20 repeat a colour with another marker)
    palette = [f"C{i}" for i in range(10)] if len(rows) <= 10 else list(plt.get_cmap("tab20").colors)
    for ax, (key, label) in zip(axes, panels):
        if not any(summary["rows"][row][key]["n"] for row in rows):
            ax.text(0.5, 0.5, "no turns of this kind", ha="center", va="center", transform=ax.transAxes, fontsize=9)
            ax.set_xticks([])
            ax.set_title(label, fontsize=9)
            continue
        for y, row in enumerate(rows):
            d = summary["rows"][row][key]
            color, marker = palette[y % len(palette)], "osD^v"[y // len(palette) % 5]
            if d["n"] and d["lo"] == d["lo"]:
                ax.errorbar(d["value"], y, xerr=[[d["value"] - d["lo"]], [d["hi"] - d["value"]]], fmt=marker,
                            capsize=3, color=color)
            elif d["n"]:
                ax.plot(d["value"], y, marker, color=color)
        ax.axvline(0, color="grey", lw=0.8)
        # zero is the reference: keep it off the frame, with a margin on both sides
        lo, hi = ax.get_xlim()
        pad = 0.05 * (hi - lo)
        ax.set_xlim(min(lo, -pad), max(hi, pad))
        ax.set_title(label, fontsize=9)
    axes[0].set_yticks(range(len(rows)), [ROW_LABELS.get(r, r) for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"{plot_title(meta)}\nnote effect on the self-teacher, Δ in nats (95% CI, episode-clustered)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mechanism_section(model: Any, tokenizer: Any, env_id: str, *, env_kwargs: dict[str, Any] | None = None,
                      methods: Sequence[str] | None = None, episodes: int = 40, max_turns: int | None = None,
                      max_new_tokens: int = 64, tool_prompt: str = "compact", seed: int = 0,
                      model_reflector_episodes: int = 0, skip_tasks: Sequence[int] = (), out: str | Path | None = None,
                      level: int = 2, meta: dict[str, Any] | None = None) -> str:
    """The benchmark's "Mechanism" section for one env: run the probe on ``model`` (the base every method starts
    from) and return its markdown (files under ``out`` when given)."""
    from .probe import ProbeConfig, run_probe

    cfg = ProbeConfig(env_id=env_id, env_kwargs=dict(env_kwargs or {}), episodes=episodes, max_turns=max_turns,
                      max_new_tokens=max_new_tokens, tool_prompt=tool_prompt, seed=seed,
                      model_reflector_episodes=model_reflector_episodes, skip_tasks=list(skip_tasks),
                      **({"methods": list(methods)} if methods is not None else {}))
    res = run_probe(model, tokenizer, cfg)
    summary = summarise(res.turns, res.rows, n_boot=cfg.n_boot, seed=cfg.seed)
    info = {"env_id": env_id, "temperature": cfg.temperature, "split": cfg.split, "seconds": res.seconds["total"],
            "oracle": res.oracle, **(meta or {})}
    if out is not None:
        write_outputs(res, summary, info, res.notes, out)
    return markdown(summary, info, title=f"Mechanism: {env_id}", level=level)
