"""Teacher notes (the privileged text each method shows the self-teacher) and the teacher weights.

A note is a ``str`` or ``None`` (= this turn does not enter the distillation loss); which note a
method uses is decided in :mod:`hero_gym.agents.methods`. HERO notes come in named styles
(:data:`NOTE_STYLES`): the default shows a diagnosis that does not quote the student's mistake and the
better action written in the env's own syntax; ``legacy`` keeps the earlier notes (quoting wording, JSON targets). The renderer
(``hero_gym.chat.ChatRenderer.note_ids``) turns a note into the teacher context.

Teacher *weights* (:class:`TeacherWeights`): ``ema`` (default, as in SDPO) = an exponential moving
average of the trainable (LoRA) parameters, swapped in for the teacher pass; ``live`` = the current
student weights under stop-gradient; ``base`` = the PEFT adapter disabled (the initial model).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from hero_gym.records import Episode

from .reflector import TurnReflection
from .targets import render_action

TeacherKind = Literal["live", "ema", "base"]

__all__ = [
    "TeacherKind",
    "NOTE_STYLES",
    "DEFAULT_NOTE_STYLE",
    "hero_note",
    "envfb_note",
    "demo_note",
    "pick_demo",
    "SuccessBuffer",
    "TeacherWeights",
]

_RANK = {"low": 0, "medium": 1, "high": 2}

HERO_HEADER = "Hindsight note on your next action (from a review of how this episode went):"
ENVFB_HEADER = "Note: this is what the environment will return after your next action:"
DEMO_HEADER = "Note: here is a successful way to solve this same task, for reference:"


NOTE_STYLES = ("no_echo_target", "no_echo", "target_only", "echo_target", "legacy")
"""The HERO note styles, compared by the mechanism probe:

* ``no_echo_target`` (default): the diagnosis that names the mistake without quoting it, then
  ``Better action: <target>`` with the target written as the agent writes actions in its env;
* ``no_echo``: that diagnosis alone;
* ``target_only``: ``Better action: <target>`` alone (turns without a target are masked);
* ``echo_target``: the wording that quotes the env's message and the action, with the env-syntax target;
* ``legacy``: the earlier notes: the quoting wording, and only targets a reflector was given
  (a ``target_fn``, a model), written as JSON or ``reply to the user: ...``.
"""
DEFAULT_NOTE_STYLE = "no_echo_target"


def _fmt_target(target: dict[str, Any]) -> str:
    """The legacy rendering of a target (JSON, or ``reply to the user: <message>``)."""
    if set(target) == {"message"}:
        return f"reply to the user: {target['message']}"
    if "name" in target:
        return json.dumps({"name": target["name"], "arguments": target.get("arguments", {})}, ensure_ascii=False)
    return json.dumps(target, ensure_ascii=False)


def _target_text(refl: TurnReflection, style: str, target_confidence: tuple[str, ...]) -> str | None:
    if not refl.next_action_target or style == "no_echo":
        return None
    if style == "legacy":   # the earlier notes: only given / model targets, gated by the diagnosis' confidence
        if refl.target_source == "visible" or refl.confidence not in target_confidence:
            return None
        return _fmt_target(refl.next_action_target)
    if (refl.target_confidence or refl.confidence) not in target_confidence:
        return None
    if refl.target_text:
        return refl.target_text
    # a hand-made reflection without the env's syntax: a message as itself, a call as a Hermes block
    return render_action(refl.next_action_target, "hermes")


def hero_note(refl: TurnReflection | None, *, min_confidence: str = "medium",
              target_confidence: tuple[str, ...] = ("high",), style: str = DEFAULT_NOTE_STYLE) -> str | None:
    """HERO note for one turn in note ``style`` (see :data:`NOTE_STYLES`): the diagnosis, plus
    ``Better action: <target>`` when the reflector gave a target with a confidence in ``target_confidence``
    (default: high only; a target's own ``target_confidence`` counts when it has one).

    ``None`` (= the turn is masked) when there is no diagnosis or its confidence is below
    ``min_confidence`` (default ``"medium"``: low-confidence guesses stay out of the loss; a neutral
    note moves the student as much as a wrong one), and in ``target_only`` style when there is no target.
    ``min_confidence="low"`` keeps every diagnosis."""
    if min_confidence not in _RANK:
        raise ValueError(f"min_confidence must be one of {list(_RANK)}, got {min_confidence!r}")
    if style not in NOTE_STYLES:
        raise ValueError(f"note style must be one of {list(NOTE_STYLES)}, got {style!r}")
    if refl is None or not refl.diagnosis.strip() or _RANK.get(refl.confidence, 0) < _RANK[min_confidence]:
        return None
    target = _target_text(refl, style, target_confidence)
    if style == "target_only":
        return f"{HERO_HEADER}\nBetter action: {target}" if target else None
    diagnosis = refl.diagnosis
    if style in ("legacy", "echo_target") and refl.echo_diagnosis:
        diagnosis = refl.echo_diagnosis
    note = f"{HERO_HEADER}\n{diagnosis.strip()}"
    if target:
        note += f"\nBetter action: {target}"
    return note


def envfb_note(observation: str, *, max_chars: int = 600) -> str:
    """Environment-feedback SD note: the raw next observation, truncated to ``max_chars``."""
    obs = observation if len(observation) <= max_chars else observation[:max_chars] + " …[truncated]"
    return f"{ENVFB_HEADER}\n{obs}"


def demo_note(demo: Episode, *, max_chars: int = 2000, max_obs_chars: int = 200) -> str:
    """Full-demo note: a successful trajectory of the same task, as compact text (actions in full,
    observations truncated to ``max_obs_chars``; the whole note to ``max_chars``)."""
    lines = [DEMO_HEADER]
    for i, t in enumerate(demo.turns):
        obs = t.observation if len(t.observation) <= max_obs_chars else t.observation[:max_obs_chars] + " …"
        lines.append(f"Step {i + 1}: {t.action_text.strip()}\n  -> {obs}")
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[:max_chars] + " …[truncated]"


class SuccessBuffer:
    """Per task, the most recent shortest successful episode seen so far (bounded by ``max_tasks``).

    Used by the full-demo teacher when no sibling of the current batch succeeded. Serialisable
    with :meth:`state_dict` / :meth:`load_state_dict` (stored in trainer checkpoints).
    """

    def __init__(self, max_tasks: int = 10_000):
        self.max_tasks = max_tasks
        self._by_task: dict[str, Episode] = {}

    def __len__(self) -> int:
        return len(self._by_task)

    def add(self, episodes: Sequence[Episode]) -> None:
        for ep in episodes:
            if not ep.success or ep.task_id is None:
                continue
            cur = self._by_task.get(ep.task_id)
            if cur is None or len(ep.turns) <= len(cur.turns):
                self._by_task.pop(ep.task_id, None)
                self._by_task[ep.task_id] = ep
            while len(self._by_task) > self.max_tasks:
                self._by_task.pop(next(iter(self._by_task)))

    def get(self, task_id: str | None) -> Episode | None:
        return self._by_task.get(task_id) if task_id is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"max_tasks": self.max_tasks, "episodes": [e.model_dump(mode="json") for e in self._by_task.values()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.max_tasks = state.get("max_tasks", self.max_tasks)
        self._by_task = {}
        for d in state.get("episodes", []):
            ep = Episode.model_validate(d)
            self._by_task[ep.task_id] = ep  # type: ignore[index]


def pick_demo(ep: Episode, batch: Sequence[Episode], buffer: SuccessBuffer | None) -> Episode | None:
    """The demonstration for ``ep``'s full-demo note: the shortest successful *other* episode of the same
    task in ``batch``, else the buffer's (if it is not ``ep``), else ``None`` (the turns are masked).

    Never ``ep`` itself: its own trajectory would show the teacher the very action it scores."""
    if ep.task_id is None:
        return None
    sibs = [o for o in batch if o.task_id == ep.task_id and o.success and o.episode_id != ep.episode_id]
    if sibs:
        return min(sibs, key=lambda o: len(o.turns))
    found = buffer.get(ep.task_id) if buffer is not None else None
    return found if found is not None and found.episode_id != ep.episode_id else None


class TeacherWeights:
    """Selects the weights the teacher pass runs with.

    ``kind="ema"`` (default): ``theta_ema <- (1 - rate) * theta_ema + rate * theta`` over the trainable
    parameters after each optimiser step (:meth:`update`; SDPO uses rate 0.05); :meth:`active` swaps the
    EMA values in and restores the live ones afterwards. Only trainable tensors are copied (LoRA: tiny).
    ``kind="live"``: the model as it is (the caller runs under ``torch.no_grad``).
    ``kind="base"``: PEFT adapters disabled (``model.disable_adapter()``); for a model without
    adapters this is the same as live.
    """

    def __init__(self, model: Any, kind: TeacherKind = "ema", ema_rate: float = 0.05):
        if kind not in ("live", "ema", "base"):
            raise ValueError(f"unknown teacher kind {kind!r}")
        if not 0.0 < ema_rate <= 1.0:
            raise ValueError(f"ema_rate must be in (0, 1], got {ema_rate}")
        self.model, self.kind, self.rate = model, kind, ema_rate
        self.shadow: dict[str, Any] = {}
        if kind == "ema":
            self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def update(self) -> None:
        """Fold the current trainable weights into the EMA (no-op for live/base)."""
        if self.kind != "ema":
            return
        import torch

        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self.shadow:
                    self.shadow[n].lerp_(p.detach(), self.rate)

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        """Context in which ``self.model`` computes the teacher's logits. Everything the teacher needs
        (its output head included) must be evaluated inside this context."""
        import torch

        if self.kind == "base" and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield self.model
        elif self.kind == "ema" and self.shadow:
            params = dict(self.model.named_parameters())
            saved = {n: params[n].detach().clone() for n in self.shadow}
            with torch.no_grad():
                for n, v in self.shadow.items():
                    params[n].copy_(v)
            try:
                yield self.model
            finally:
                with torch.no_grad():
                    for n, v in saved.items():
                        params[n].copy_(v)
        else:
            yield self.model

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": self.rate, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in (state.get("shadow") or {}).items():
            if k in self.shadow:
                self.shadow[k].copy_(v)
