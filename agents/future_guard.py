"""The no-future-exposure guard of the model reflector's diagnoses.

The reflector prompt asks for a diagnosis of turn ``t`` from turn ``t``'s action and the observation right
after it, and forbids copying later actions or observations word for word (``REFLECTION_RULES`` rule 3).
A small model does not always obey, and a diagnosis that copies what only the future showed would teach
the student the future rather than a judgement. :func:`drop_future_copies` enforces the rule after the
fact and counts what it removed:

* a **diagnosis** is dropped (the turn gets no note) when it contains, verbatim, the action text of a later
  turn or a span of at least ``min_span`` characters of a later turn's observation;
* a **target** (``next_action_target``) is dropped, the diagnosis kept, when it is exactly the action of a
  later turn (same tool and arguments, or the same message).

"Later" means first shown after turn ``t``: text that already appeared up to turn ``t`` (the first
observation, turn ``t``'s own observation, earlier turns) is never counted as a copy, so a diagnosis that
quotes turn ``t``'s own error message stays even when the same error recurs later. Matching ignores case
and runs of whitespace. Time is linear in the episode's text (``min_span``-character windows).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

from hero_gym.records import Episode

from .reflector import Reflection

__all__ = ["MIN_ACTION_CHARS", "MIN_SPAN", "drop_future_copies"]

#: observation spans at least this long count as copied
MIN_SPAN = 40
#: action texts shorter than this are not looked for in diagnoses (too common to mean a copy)
MIN_ACTION_CHARS = 8

_WS = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip().lower()


def _canonical_action(action: dict[str, Any] | None) -> str | None:
    if not action:
        return None
    if "name" in action:
        return json.dumps({"name": action["name"], "arguments": action.get("arguments") or {}}, sort_keys=True,
                          default=str)
    if "message" in action:
        return json.dumps({"message": _norm(str(action["message"]))})
    return None


def _first_turn_of_windows(ep: Episode, span: int) -> dict[str, int]:
    """Every ``span``-character window of the episode's observations -> the first turn showing it
    (-1 = the first observation)."""
    first: dict[str, int] = {}
    for k, text in [(-1, ep.initial_observation), *((i, t.observation) for i, t in enumerate(ep.turns))]:
        s = _norm(text)
        for i in range(len(s) - span + 1):
            first.setdefault(s[i:i + span], k)
    return first


def drop_future_copies(episodes: Sequence[Episode], reflections: Sequence[Reflection], *,
                       min_span: int = MIN_SPAN) -> tuple[list[Reflection], dict[str, int]]:
    """``reflections`` without the diagnoses and targets that copy the future (see the module docstring),
    and the counts ``{"diagnoses": n, "targets": m}`` of what was dropped. The input is not modified."""
    if len(episodes) != len(reflections):
        raise ValueError("drop_future_copies needs one Reflection per episode")
    if min_span < 1:
        raise ValueError(f"min_span must be >= 1, got {min_span}")
    counts = {"diagnoses": 0, "targets": 0}
    out: list[Reflection] = []
    for ep, refl in zip(episodes, reflections):
        if not refl.turns:
            out.append(refl)
            continue
        windows = _first_turn_of_windows(ep, min_span)
        action_first: dict[str, int] = {}
        call_first: dict[str, int] = {}
        for k, turn in enumerate(ep.turns):
            a = _norm(turn.action_text)
            if len(a) >= MIN_ACTION_CHARS:
                action_first.setdefault(a, k)
            c = _canonical_action(turn.parsed_action)
            if c is not None:
                call_first.setdefault(c, k)
        kept = {}
        for t, r in refl.turns.items():
            d = _norm(r.diagnosis)
            copies_action = any(k > t and a in d for a, k in action_first.items())
            copies_obs = any(windows.get(d[i:i + min_span], -2) > t for i in range(len(d) - min_span + 1))
            if copies_action or copies_obs:
                counts["diagnoses"] += 1
                continue
            target = _canonical_action(r.next_action_target)
            if target is not None and call_first.get(target, -1) > t:
                counts["targets"] += 1
                r = dataclasses.replace(r, next_action_target=None, target_text=None, target_source=None)
            kept[t] = r
        out.append(dataclasses.replace(refl, turns=kept))
    return out, counts
