"""The method registry: what distinguishes GRPO, the self-distillation baselines and HERO.

Every method is one :class:`MethodSpec` in :data:`METHODS`. The trainer asks it three things:
does the method need a reflector (and which), does it use the GRPO outcome loss, and which note
(the privileged text shown to the self-teacher before a turn's action) each turn gets. The notes
are the *only* difference between the distillation methods; everything else (rollouts, teacher
weights, loss, budget) is shared. Adding a method = adding one entry.

=================  ====================  =========================================================
name               label                 note of turn ``t``
=================  ====================  =========================================================
``grpo``           GRPO                  none (group-normalised outcome advantages instead)
``envfb_sd``       Env-feedback SD       the raw observation that followed turn ``t``
``full_demo``      Full-demo             a successful trajectory of the same task by *another*
                                         episode (a sibling in the batch or the success buffer);
                                         masked when none exists
``hero_rules``     HERO (rules)          the :class:`~.reflector.RuleReflector`'s diagnosis of turn ``t``
``hero``           HERO                  the policy's own hindsight diagnosis of turn ``t``
                                         (:class:`~.reflector.LLMReflector` on the policy)
``hero_shuffled``  HERO (shuffled        the policy's diagnosis of turn ``t`` of a *different*
                   diagnoses)            episode of the batch (a seeded derangement): the
                                         settle-it ablation — if diagnoses carry the gain, this
                                         falls back to the level of uninformative notes
=================  ====================  =========================================================
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from hero_gym.records import Episode

from .reflector import Reflection
from .teachers import SuccessBuffer, demo_note, envfb_note, hero_note, pick_demo

__all__ = ["MethodSpec", "METHODS", "NoteOptions", "Notes", "build_notes", "derangement", "get_method"]

Notes = list[list[str | None]]
"""``notes[i][t]``: the teacher note of episode ``i``, turn ``t``; ``None`` = the turn is masked."""

ReflectorKind = Literal["rules", "model"]


@dataclass(frozen=True)
class NoteOptions:
    """Knobs of the note builders (set from :class:`~.trainer.TrainConfig`)."""

    envfb_max_chars: int = 600
    demo_max_chars: int = 2000
    min_confidence: Literal["high", "medium", "low"] = "medium"
    target_confidence: tuple[str, ...] = ("high",)
    seed: int = 0   # the derangement of ``hero_shuffled``
    note_style: str = "no_echo_target"   # HERO note style, see hero_gym.agents.teachers.NOTE_STYLES


NoteBuilder = Callable[[Sequence[Episode], "Sequence[Reflection] | None", "SuccessBuffer | None", NoteOptions], Notes]


@dataclass(frozen=True)
class MethodSpec:
    """One training method.

    Attributes:
        name: the key in :data:`METHODS` (``TrainConfig.method``).
        label: display name for tables and plots.
        reflector: ``"rules"`` / ``"model"`` when the notes need per-turn diagnoses, else ``None``.
        uses_grpo: the GRPO outcome loss is the method's objective (no teacher).
        notes: ``notes(episodes, reflections, success_buffer, options) -> Notes``.
    """

    name: str
    label: str
    reflector: ReflectorKind | None
    uses_grpo: bool
    notes: NoteBuilder

    @property
    def distills(self) -> bool:
        """Whether the method has a self-teacher (every method except pure GRPO)."""
        return not self.uses_grpo


def _no_notes(episodes, reflections, buffer, opts) -> Notes:
    return [[None] * len(ep.turns) for ep in episodes]


def _envfb_notes(episodes, reflections, buffer, opts) -> Notes:
    return [[envfb_note(turn.observation, max_chars=opts.envfb_max_chars) for turn in ep.turns] for ep in episodes]


def _demo_notes(episodes, reflections, buffer, opts) -> Notes:
    out: Notes = []
    for ep in episodes:
        demo = pick_demo(ep, episodes, buffer)
        note = demo_note(demo, max_chars=opts.demo_max_chars) if demo is not None else None
        out.append([note] * len(ep.turns))
    return out


def _check_reflections(episodes: Sequence[Episode], reflections: Sequence[Reflection] | None) -> Sequence[Reflection]:
    if reflections is None or len(reflections) != len(episodes):
        raise ValueError("HERO notes need one Reflection per episode")
    return reflections


def _hero_notes(episodes, reflections, buffer, opts) -> Notes:
    reflections = _check_reflections(episodes, reflections)
    return [[hero_note(r.get(t), min_confidence=opts.min_confidence, target_confidence=opts.target_confidence,
                       style=opts.note_style) for t in range(len(ep.turns))] for ep, r in zip(episodes, reflections)]


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation ``p`` of ``range(n)`` with ``p[i] != i`` for every ``i`` (``n >= 2``).

    Sattolo's algorithm: a uniformly random cyclic permutation, which has no fixed point."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 elements")
    p = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        p[i], p[j] = p[j], p[i]
    return p


def _shuffled_hero_notes(episodes, reflections, buffer, opts) -> Notes:
    """HERO notes where episode ``i`` gets the diagnoses of episode ``p[i] != i`` (turn ``t`` from its turn
    ``t``; masked when that episode has no diagnosis for turn ``t``). A batch of one episode is masked."""
    reflections = _check_reflections(episodes, reflections)
    if len(episodes) < 2:
        return _no_notes(episodes, reflections, buffer, opts)
    perm = derangement(len(episodes), opts.seed)
    return _hero_notes(episodes, [reflections[j] for j in perm], buffer, opts)


METHODS: dict[str, MethodSpec] = {m.name: m for m in [
    MethodSpec("grpo", "GRPO", None, True, _no_notes),
    MethodSpec("envfb_sd", "Env-feedback SD", None, False, _envfb_notes),
    MethodSpec("full_demo", "Full-demo", None, False, _demo_notes),
    MethodSpec("hero_rules", "HERO (rules)", "rules", False, _hero_notes),
    MethodSpec("hero", "HERO", "model", False, _hero_notes),
    MethodSpec("hero_shuffled", "HERO (shuffled diagnoses)", "model", False, _shuffled_hero_notes),
]}


def get_method(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` called ``name`` (``ValueError`` listing the known ones otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def build_notes(
    method: str,
    episodes: Sequence[Episode],
    *,
    reflections: Sequence[Reflection] | None = None,
    success_buffer: SuccessBuffer | None = None,
    options: NoteOptions | None = None,
) -> Notes:
    """The teacher note of every turn of every episode under ``method`` (see the table above)."""
    return get_method(method).notes(episodes, reflections, success_buffer, options or NoteOptions())
