"""The benchmark report's "Mechanism" section: the mechanism probe (:mod:`hero_gym.agents.probe`) on each env's
base model (the weights every method starts from), with the benchmark's env settings and the methods it runs.

It measures, with forward passes only, how each method's note moves the self-teacher's log-probability of the
student's own actions and of the env oracle's action (``docs/probe.md``). ``Options.mechanism_episodes``
sets its size (``0``: no section); files go to ``<out>/mechanism/<env>/`` and the section is appended to
``results.md`` (``--report-only`` appends the saved sections again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .presets import BASE, Options

__all__ = ["mechanism_report", "saved_mechanism"]

HEADER = ["", "## Mechanism", "",
          "How each method's note moves the self-teacher (the base model with the note in its context) on the "
          "student's own training rollouts: Δ log p of the sampled action on wrong and right turns and of the "
          "oracle's action, episode-clustered 95% CIs (docs/probe.md).", ""]


def mechanism_report(bench: Any, opts: Options, out: Path) -> str:
    """Run the probe per env of ``opts`` and append its sections to ``out/results.md``; returns the text."""
    if opts.mechanism_episodes <= 0:
        return ""
    from hero_gym.agents.methods import METHODS
    from hero_gym.agents.probe_cli import warm_start_seen_tasks
    from hero_gym.agents.probe_report import mechanism_section

    methods = [m for m in opts.methods if m != BASE and m in METHODS and METHODS[m].distills and not METHODS[m].oracle]
    parts = list(HEADER)
    for env in opts.envs:
        s = bench.setups[env]
        model, tok = bench.source.base(s)
        skip: list[int] = []
        ws = bench.source.warm_start_info.get(env, {})
        if ws.get("config"):
            from hero_gym.agents.warmstart import WarmStartConfig

            skip = warm_start_seen_tasks(s.env_id, WarmStartConfig(**ws["config"]))
        desc = f"{opts.model}" + (", warm-started" if ws.get("config") else " (raw)")
        section = mechanism_section(
            model, tok, s.env_id, env_kwargs={k: v for k, v in s.train_kwargs.items() if k != "split"},
            methods=methods, episodes=opts.mechanism_episodes, max_turns=s.max_turns,
            max_new_tokens=opts.max_new_tokens, tool_prompt=opts.tool_prompt,
            model_reflector_episodes=2 if {"hero", "hero_shuffled"} & set(methods) else 0, skip_tasks=skip,
            out=out / "mechanism" / env, level=3, meta={"model": desc})
        (out / "mechanism" / env / "section.md").write_text(section)
        parts.append(section)
    text = "\n".join(parts)
    with (out / "results.md").open("a") as f:
        f.write(text)
    return text


def saved_mechanism(out: Path, opts: Options) -> str:
    """The sections a finished run saved (for ``--report-only``), appended to ``out/results.md``."""
    found = [out / "mechanism" / env / "section.md" for env in opts.envs]
    found = [p for p in found if p.exists()]
    if not found:
        return ""
    text = "\n".join(HEADER + [p.read_text() for p in found])
    with (out / "results.md").open("a") as f:
        f.write(text)
    return text
