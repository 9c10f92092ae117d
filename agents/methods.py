"""The method registry: what distinguishes GRPO, the self-distillation baselines and HERO.

Every method is one :class:`MethodSpec` in :data:`METHODS`. The trainer asks it three things:
does the method need a reflector (and which), does it use the GRPO outcome loss, and which note
(the privileged text shown to the self-teacher before a turn's action) each turn gets. The notes
are the *only* difference between the distillation methods; everything else (rollouts, teacher
weights, loss, budget) is shared. Adding a method = adding one entry.

=====================  ======================  =====================================================
name                   label                   note of turn ``t``
=====================  ======================  =====================================================
``grpo``               GRPO                    none (group-normalised outcome advantages instead)
``envfb_sd``           Env-feedback SD         the raw observation that followed turn ``t``
``full_demo``          Full-demo               a successful trajectory of the same task by *another*
                                               episode (a sibling in the batch or the success
                                               buffer), else the env expert's demonstration of that
                                               same (training) task when an :class:`ExpertDemos` is
                                               given (``NoteOptions.expert_demo``); masked otherwise
``hero_rules``         HERO (rules)            the :class:`~.reflector.RuleReflector`'s diagnosis of
                                               turn ``t``
``hero_rules_shuffled``  HERO (rules, shuffled  the rule diagnoses of an episode of *another task*,
                       diagnoses)              on HERO (rules)' own note positions
``hero``               HERO                    the policy's own hindsight diagnosis of turn ``t``
                                               (:class:`~.reflector.LLMReflector` on the policy)
``hero_shuffled``      HERO (shuffled          the policy's diagnoses of an episode of *another
                       diagnoses)              task*, carried onto HERO's own note positions: the
                                               settle-it ablation (same turns trained, same number
                                               of notes, unrelated content)
``hero_rules_oracle``  Ceiling: HERO (rules)   the rule diagnosis of turn ``t`` with the env's
                       + oracle targets        oracle action (in the state the student reached) as
                       (privileged)            the target of every turn judged an error
=====================  ======================  =====================================================

``hero_rules_oracle`` is **privileged**, not a fair method: it shows what a perfect reflector's targets
could give. Its training envs are wrapped in :class:`~hero_gym.agents.oracle.OracleRecorder` (the env's
:meth:`~hero_gym.core.MultiTurnEnv.oracle_action` before every step, stored in the turn's
``info["oracle_action"]``), and :func:`~hero_gym.agents.oracle.oracle_target` hands that action to the rule reflector
(``RuleReflector(target_fn=...)``). It needs an env with ``has_oracle``. The benchmark leaves privileged
methods out unless they are asked for.

The shuffled ablations (:func:`shuffled_notes`): episode ``i`` keeps exactly the turns HERO would train
(those where its own diagnosis gives a note); the text on them is the note sequence of a donor episode
drawn (seeded) from the batch's episodes of *other* tasks only (a same-task sibling's diagnosis would
still be informative), repeated cyclically when the donor has fewer notes. With no other-task donor that
has a note (e.g. a batch of one task), the episode is masked.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hero_gym.records import Episode

from .reflector import Reflection
from .teachers import SuccessBuffer, demo_note, envfb_note, hero_note, pick_demo

__all__ = ["ExpertDemos", "MethodSpec", "METHODS", "NoteOptions", "Notes", "build_notes", "get_method",
           "shuffled_notes", "task_key"]

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
    seed: int = 0   # the donor draw of the shuffled ablations
    expert_demo: Callable[[Episode], Episode | None] | None = None
    """Full-demo's fallback when no successful rollout of the task exists: the env expert's demonstration
    of the same task (:class:`ExpertDemos`); ``None`` = no fallback (the turns are masked)."""
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
        oracle: privileged: the training envs record the env's oracle action at every turn and the rule
            reflector takes it as its target (:mod:`~hero_gym.agents.oracle`); a ceiling, not a fair method.
    """

    name: str
    label: str
    reflector: ReflectorKind | None
    uses_grpo: bool
    notes: NoteBuilder
    oracle: bool = False

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
        if demo is None and opts.expert_demo is not None:
            demo = opts.expert_demo(ep)
        note = demo_note(demo, max_chars=opts.demo_max_chars) if demo is not None else None
        out.append([note] * len(ep.turns))
    return out


class ExpertDemos:
    """Full-demo's fallback: the env expert (:func:`hero_gym.agents.warmstart.make_expert`) plays the same
    training task as the episode (same env settings, reset seed and options), once per task; the
    demonstration is used only if the expert succeeded. ``used`` / ``asked`` count the episodes that got
    an expert demonstration / asked for one (the fallback rate is ``used`` over the episodes with a demo).

    The demonstration is played on the *training* task the episode played, so nothing of the held-out
    tasks leaks into training."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None, *, max_turns: int | None = None):
        self.env_id, self.env_kwargs, self.max_turns = env_id, dict(env_kwargs or {}), max_turns
        self._by_task: dict[str, Episode | None] = {}
        self.asked = 0
        self.used = 0

    def __call__(self, ep: Episode) -> Episode | None:
        self.asked += 1
        key = task_key(ep)
        if key not in self._by_task:
            self._by_task[key] = self._play(ep)
        demo = self._by_task[key]
        self.used += demo is not None
        return demo

    def _play(self, ep: Episode) -> Episode | None:
        import hero_gym
        from hero_gym.records import Turn

        from .warmstart import make_expert

        kw = dict(self.env_kwargs)
        if self.max_turns is not None:
            kw["max_turns"] = self.max_turns
        env = hero_gym.make(self.env_id, **kw)
        try:
            obs, _ = env.reset(seed=ep.seed, options=dict(ep.options))
            expert = make_expert(env)
            demo = Episode(env_id=self.env_id, task_id=ep.task_id, initial_observation=str(obs),
                           episode_id=f"expert-{task_key(ep)}")
            done = False
            while not done:
                action = expert.action()
                obs, reward, terminated, truncated, info = env.step(action)
                demo.turns.append(Turn(index=len(demo.turns), action_text=action, observation=str(obs),
                                       reward=float(reward), terminated=bool(terminated), truncated=bool(truncated)))
                demo.total_reward += float(reward)
                done = terminated or truncated
                if done:
                    demo.success = bool(info.get("success", terminated and reward > 0))
        finally:
            env.close()
        demo.metadata["source"] = "expert"
        return demo if demo.success else None


def _check_reflections(episodes: Sequence[Episode], reflections: Sequence[Reflection] | None) -> Sequence[Reflection]:
    if reflections is None or len(reflections) != len(episodes):
        raise ValueError("HERO notes need one Reflection per episode")
    return reflections


def _hero_notes(episodes, reflections, buffer, opts) -> Notes:
    reflections = _check_reflections(episodes, reflections)
    return [[hero_note(r.get(t), min_confidence=opts.min_confidence, target_confidence=opts.target_confidence,
                       style=opts.note_style) for t in range(len(ep.turns))] for ep, r in zip(episodes, reflections)]


def task_key(ep: Episode) -> str:
    """Which task an episode played: its ``task_id``, else its ``task_index`` option, else the episode."""
    if ep.task_id is not None:
        return str(ep.task_id)
    if "task_index" in ep.options:
        return f"task_index={ep.options['task_index']}"
    return f"episode={ep.episode_id}"


def shuffled_notes(own: Notes, episodes: Sequence[Episode], seed: int) -> Notes:
    """The settle-it ablation of a diagnosis method whose notes are ``own``: each episode keeps the turns
    ``own`` gives a note (so the same turns are trained, the same number of notes shown), and the text on
    them is the note sequence, in order and repeated cyclically, of a donor drawn (seeded) from the episodes
    of *other* tasks that have a note. Masked when there is no such donor."""
    rng = random.Random(seed)
    texts = [[n for n in row if n is not None] for row in own]
    keys = [task_key(ep) for ep in episodes]
    out: Notes = []
    for i, row in enumerate(own):
        donors = [j for j in range(len(episodes)) if keys[j] != keys[i] and texts[j]]
        if not donors or not texts[i]:
            out.append([None] * len(row))
            continue
        donor = texts[rng.choice(donors)]
        k = 0
        new_row: list[str | None] = []
        for note in row:
            if note is None:
                new_row.append(None)
            else:
                new_row.append(donor[k % len(donor)])
                k += 1
        out.append(new_row)
    return out


def _shuffled_hero_notes(episodes, reflections, buffer, opts) -> Notes:
    return shuffled_notes(_hero_notes(episodes, reflections, buffer, opts), episodes, opts.seed)


METHODS: dict[str, MethodSpec] = {m.name: m for m in [
    MethodSpec("grpo", "GRPO", None, True, _no_notes),
    MethodSpec("envfb_sd", "Env-feedback SD", None, False, _envfb_notes),
    MethodSpec("full_demo", "Full-demo (successful rollout, else expert demonstration)", None, False, _demo_notes),
    MethodSpec("hero_rules", "HERO (rules)", "rules", False, _hero_notes),
    MethodSpec("hero_rules_shuffled", "HERO (rules, shuffled diagnoses)", "rules", False, _shuffled_hero_notes),
    MethodSpec("hero", "HERO", "model", False, _hero_notes),
    MethodSpec("hero_shuffled", "HERO (shuffled diagnoses)", "model", False, _shuffled_hero_notes),
    MethodSpec("hero_rules_oracle", "Ceiling: HERO (rules) + oracle targets (privileged)", "rules", False, _hero_notes,
               oracle=True),
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
