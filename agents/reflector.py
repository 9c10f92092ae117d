"""Hindsight reflectors: turn a finished episode into one diagnosis per assistant turn.

A reflector returns, for each episode, a :class:`Reflection` mapping turn positions
(0-based, the position in ``Episode.turns``) to a :class:`TurnReflection`. A turn with
no usable diagnosis is simply absent, and the trainer leaves it out of the loss.

Three kinds ship here:

* :class:`LLMReflector` — one generation over the whole trajectory (by default with the
  policy being trained, or any other policy / text generator) returning strict JSON
  ``{"turn1": {"diagnosis": str, "confidence": "high|medium|low",
  "next_action_target": {...} | null}, ...}``; parsed defensively by
  :func:`parse_reflection` (code fences, prose around the JSON, truncated JSON,
  wrong key spellings), with a bounded number of retries when nothing usable came back.
* :class:`RuleReflector` — diagnoses written from the env's structured signals
  (action errors, repeated calls, no-op observations, the final outcome). No model
  needed: for tiny models, tests and as an ablation.
* Anything implementing :class:`Reflector` (one method, ``reflect``), e.g.
  :class:`FunctionReflector` wrapping a plain function.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from hero_gym.records import Episode, Turn

Confidence = Literal["high", "medium", "low"]
_CONFIDENCES = ("high", "medium", "low")

__all__ = [
    "Confidence",
    "TurnReflection",
    "Reflection",
    "Reflector",
    "FunctionReflector",
    "RuleReflector",
    "LLMReflector",
    "REFLECTION_RULES",
    "build_reflection_messages",
    "parse_reflection",
    "extract_json_object",
]


@dataclass
class TurnReflection:
    """The hindsight diagnosis of one assistant turn.

    ``next_action_target`` is the corrected action (e.g. ``{"name": ..., "arguments": {...}}``
    or ``{"message": ...}``) when the reflector judged it unambiguous, else ``None``.
    """

    diagnosis: str
    confidence: Confidence = "low"
    next_action_target: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"diagnosis": self.diagnosis, "confidence": self.confidence,
                "next_action_target": self.next_action_target}


@dataclass
class Reflection:
    """Per-turn diagnoses of one episode. ``turns`` keys are 0-based turn positions."""

    episode_id: str
    turns: dict[int, TurnReflection] = field(default_factory=dict)
    source: str = ""
    raw: str | None = None          # raw LLM text (last attempt), for auditing
    attempts: int = 0

    def get(self, t: int) -> TurnReflection | None:
        return self.turns.get(t)

    def to_json(self) -> dict[str, Any]:
        """The schema form ``{"turn1": {...}, ...}`` (1-based keys)."""
        return {f"turn{t + 1}": r.to_dict() for t, r in sorted(self.turns.items())}


@runtime_checkable
class Reflector(Protocol):
    """Anything that turns finished episodes into per-turn reflections (same order as input)."""

    def reflect(self, episodes: Sequence[Episode]) -> list[Reflection]: ...


class FunctionReflector:
    """Wrap ``fn(episode) -> dict[int, TurnReflection]`` (0-based keys) as a :class:`Reflector`."""

    def __init__(self, fn: Callable[[Episode], dict[int, TurnReflection]], name: str = "function"):
        self.fn, self.name = fn, name

    def reflect(self, episodes: Sequence[Episode]) -> list[Reflection]:
        return [Reflection(ep.episode_id, dict(self.fn(ep)), source=self.name) for ep in episodes]


# --------------------------------------------------------------------------------------
# Defensive JSON parsing
# --------------------------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", re.S)
_TURN_KEY = re.compile(r"^\s*turn[\s_\-]*(\d+)\s*$", re.I)


def _close_truncated(s: str) -> str | None:
    """Cut a truncated JSON object back to its last complete top-level member and close it.

    Walks the text tracking strings/escapes and the bracket stack; remembers the last
    offset where a member of the outermost object ended (a value closing at depth 1).
    Returns a syntactically closed candidate, or ``None``.
    """
    depth_stack: list[str] = []
    in_str = esc = False
    last_member_end = -1
    for i, ch in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth_stack.append("}" if ch == "{" else "]")
        elif ch in "}]":
            if not depth_stack:
                break
            depth_stack.pop()
            if len(depth_stack) == 1:
                last_member_end = i
            if not depth_stack:
                return s[: i + 1]
    if last_member_end < 0:
        return None
    return s[: last_member_end + 1] + "}"


def extract_json_object(text: str) -> Any | None:
    """Best-effort extraction of the first JSON object/array in model output.

    Handles code fences, prose before/after the JSON, trailing garbage (``raw_decode``),
    and truncated output (cut back to the last complete member). ``None`` if hopeless.
    """
    if not text:
        return None
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for cand in candidates:
        starts = sorted((cand.find(ch), ch) for ch in "{[" if cand.find(ch) >= 0)
        for start, start_ch in starts:
            body = cand[start:]
            try:
                obj, _ = decoder.raw_decode(body)
                return obj
            except json.JSONDecodeError:
                pass
            if start_ch == "{":
                closed = _close_truncated(body)
                if closed is not None:
                    try:
                        return json.loads(closed)
                    except json.JSONDecodeError:
                        pass
    return None


def _norm_target(v: Any) -> dict[str, Any] | None:
    if isinstance(v, dict):
        return v or None
    if isinstance(v, str) and v.strip() and v.strip().lower() not in ("null", "none"):
        parsed = extract_json_object(v)
        return parsed if isinstance(parsed, dict) else {"message": v.strip()}
    return None


def _norm_entry(v: Any) -> TurnReflection | None:
    if not isinstance(v, dict):
        return None
    diag = v.get("diagnosis")
    if not isinstance(diag, str) or not diag.strip():
        return None
    conf = str(v.get("confidence", "low")).strip().lower()
    if conf not in _CONFIDENCES:
        conf = "low"
    return TurnReflection(diag.strip(), conf, _norm_target(v.get("next_action_target")))  # type: ignore[arg-type]


def parse_reflection(text: str, n_turns: int) -> dict[int, TurnReflection]:
    """Parse reflector output into ``{0-based turn: TurnReflection}``; unusable turns are absent.

    Accepts the schema object (keys ``turn1``, ``Turn 1``, ``turn_1``…), or a list of entries
    carrying a ``"turn"`` number. Entries without a non-empty string diagnosis, keys that do
    not name a turn, and turn numbers outside ``1..n_turns`` are dropped. An unknown
    confidence becomes ``"low"``.
    """
    obj = extract_json_object(text)
    items: list[tuple[int, Any]] = []
    if isinstance(obj, dict):
        if len(obj) == 1 and isinstance(next(iter(obj.values())), (dict, list)) and not _TURN_KEY.match(next(iter(obj))):
            obj = next(iter(obj.values()))  # {"turns": {...}} / {"reflection": [...]}
    if isinstance(obj, dict):
        for k, v in obj.items():
            m = _TURN_KEY.match(str(k))
            if m:
                items.append((int(m.group(1)), v))
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict) and str(v.get("turn", "")).strip().lstrip("turn").strip().isdigit():
                items.append((int(str(v["turn"]).strip().lstrip("turn").strip()), v))
    out: dict[int, TurnReflection] = {}
    for num, v in items:
        if 1 <= num <= n_turns and (num - 1) not in out:
            entry = _norm_entry(v)
            if entry is not None:
                out[num - 1] = entry
    return out


# --------------------------------------------------------------------------------------
# The LLM reflector
# --------------------------------------------------------------------------------------

REFLECTION_RULES = """\
You review a finished interaction between an AI agent and an environment, after the fact.
For every numbered agent turn, write a short diagnosis of that turn's action.

How to judge each turn:
1. Cover every agent turn, including the ones that were right; say why a good action was good.
2. Base the diagnosis of turn N on the action taken at turn N and on the observation that came
   right after it. That observation is your main evidence.
3. You may mention later turns only to point out a delayed effect of turn N (for example, that a
   wrong argument at turn N caused a failure three turns later). Never copy later actions or
   later observations into a diagnosis word for word.
4. Separate two kinds of mistakes: a decision error (the agent chose the wrong action or wrong
   arguments) and an execution error (the call was malformed, used a tool that does not exist,
   or had arguments that failed validation). Name which one it was.
5. Point out wasted turns: actions that repeat an earlier call, confirm something already
   confirmed, or ask for information the agent already had.
6. Give "next_action_target" (the action the agent should have taken at that turn, as an object
   such as {"name": "<tool>", "arguments": {...}} or {"message": "<text>"}) only when the correct
   action is clear beyond doubt; then set "confidence" to "high". When it is not clear, set
   "next_action_target" to null and "confidence" to "medium" or "low".
7. Keep each diagnosis to one or two sentences.

Answer with one JSON object and nothing else: no prose, no code fences. Use exactly these keys:
{"turn1": {"diagnosis": "...", "confidence": "high" | "medium" | "low", "next_action_target": {...} | null},
 "turn2": {...}, ...} with one key per agent turn."""


def _clip(s: str, n: int) -> str:
    s = s if s is not None else ""
    return s if len(s) <= n else s[: n // 2] + f" …[{len(s) - n} chars cut]… " + s[-n // 2:]


def build_reflection_messages(
    episode: Episode,
    *,
    max_obs_chars: int = 1500,
    max_system_chars: int = 2000,
) -> list[dict[str, str]]:
    """The chat sent to the reflector: the rules as system message, the trajectory as user message."""
    parts: list[str] = []
    if episode.system_prompt:
        parts.append("## Agent instructions\n" + _clip(episode.system_prompt, max_system_chars))
    if episode.tools:
        names = [t.get("function", t).get("name", "?") for t in episode.tools]
        parts.append("## Tools available\n" + ", ".join(map(str, names)))
    parts.append("## Start of the interaction\n" + _clip(episode.initial_observation, max_obs_chars))
    for i, turn in enumerate(episode.turns):
        err = f"\n(execution error: {turn.action_error.get('kind')})" if turn.action_error else ""
        parts.append(
            f"## Turn {i + 1}\nAgent action:\n{_clip(turn.action_text, max_obs_chars)}{err}\n"
            f"Observation after it ({turn.observation_role}):\n{_clip(turn.observation, max_obs_chars)}"
        )
    outcome = "succeeded" if episode.success else "did not succeed"
    parts.append(
        f"## Outcome\nThe task {outcome}; total reward {episode.total_reward:g} after "
        f"{len(episode.turns)} agent turns.\n\nNow write the JSON object with keys "
        + ", ".join(f'"turn{i + 1}"' for i in range(len(episode.turns))) + "."
    )
    return [{"role": "system", "content": REFLECTION_RULES}, {"role": "user", "content": "\n\n".join(parts)}]


GenerateFn = Callable[[list[list[dict[str, str]]]], list[str]]


class LLMReflector:
    """Reflect with a language model: one generation per episode, batched across episodes.

    Args:
        generate: either a callable ``generate(list_of_chats) -> list_of_texts`` or a policy
            object (e.g. :class:`hero_gym.agents.policy.HFPolicy`) exposing
            ``generate_text(chats, max_new_tokens=..., temperature=...)`` or a ``.chat(...)``
            method; see :func:`_as_generate_fn`.
        max_retries: extra attempts for episodes whose output had *no* usable turn
            (bounded; sampling makes a retry differ). Turns still missing stay masked.
        min_coverage: also retry when fewer than this fraction of turns parsed.
        max_new_tokens / temperature: generation settings (reflection is long-ish JSON).
    """

    def __init__(
        self,
        generate: Any,
        *,
        max_retries: int = 2,
        min_coverage: float = 0.5,
        max_new_tokens: int = 768,
        temperature: float = 0.3,
        max_obs_chars: int = 1500,
    ):
        self.generate = _as_generate_fn(generate, max_new_tokens=max_new_tokens, temperature=temperature)
        self.max_retries = max_retries
        self.min_coverage = min_coverage
        self.max_obs_chars = max_obs_chars

    def reflect(self, episodes: Sequence[Episode]) -> list[Reflection]:
        results = [Reflection(ep.episode_id, source="llm") for ep in episodes]
        todo = [i for i, ep in enumerate(episodes) if ep.turns]
        for _attempt in range(1 + self.max_retries):
            if not todo:
                break
            chats = [build_reflection_messages(episodes[i], max_obs_chars=self.max_obs_chars) for i in todo]
            texts = self.generate(chats)
            again = []
            for i, text in zip(todo, texts):
                n = len(episodes[i].turns)
                parsed = parse_reflection(text, n)
                res = results[i]
                res.attempts += 1
                if len(parsed) > len(res.turns):
                    res.turns, res.raw = parsed, text
                elif res.raw is None:
                    res.raw = text
                if len(res.turns) < max(1, self.min_coverage * n):
                    again.append(i)
            todo = again
        return results


def _as_generate_fn(obj: Any, *, max_new_tokens: int, temperature: float) -> GenerateFn:
    """Adapt a policy or a plain callable into ``chats -> texts``.

    Accepted: an object with ``generate_text``/``chat``/``generate_chat(chats, max_new_tokens=,
    temperature=)``; an :class:`~hero_gym.agents.policy.HFPolicy`-like object with ``tokenizer`` and
    token-level ``generate(contexts, SamplingConfig)`` (chats rendered with ``ChatRenderer``); or a
    plain callable ``chats -> texts``.
    """
    if hasattr(obj, "tokenizer") and hasattr(obj, "generate") and not any(
            callable(getattr(obj, m, None)) for m in ("generate_text", "chat", "generate_chat")):
        from hero_gym.chat import ChatRenderer

        from .policy import SamplingConfig

        renderer = ChatRenderer(obj.tokenizer, check=False)

        def call_policy(chats):
            ctxs = [renderer.prompt_ids(c) for c in chats]
            gens = obj.generate(ctxs, SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature))
            return [g.text for g in gens]
        return call_policy
    for meth in ("generate_text", "chat", "generate_chat"):
        fn = getattr(obj, meth, None)
        if callable(fn):
            def call(chats, _fn=fn):
                out = _fn(chats, max_new_tokens=max_new_tokens, temperature=temperature)
                return [o if isinstance(o, str) else getattr(o, "text", str(o)) for o in out]
            return call
    if callable(obj):
        return obj
    raise TypeError("LLMReflector needs a callable(chats)->texts or a policy with generate_text/chat")


# --------------------------------------------------------------------------------------
# The rule-based reflector
# --------------------------------------------------------------------------------------

def _action_key(turn: Turn) -> str | None:
    if turn.parsed_action is None:
        return None
    return json.dumps(turn.parsed_action, sort_keys=True, default=str)


def _describe(turn: Turn) -> str:
    pa = turn.parsed_action
    if pa and "name" in pa:
        args = json.dumps(pa.get("arguments", {}), sort_keys=True, default=str)
        return f"the call {pa['name']}({args})"
    if pa and "message" in pa:
        return "a plain message to the user"
    return "an action that could not be parsed"


_NOOP_FLAGS = ("no_op", "noop", "invalid_action", "invalid")


class RuleReflector:
    """Diagnoses from structured env signals only; never needs a model.

    Signals, in priority order per turn:
      * ``action_error`` (execution error: parse / no_action / unknown_tool / invalid_arguments /
        too_many_calls) -> confidence high; the message from the env is quoted.
      * an exact repeat of an earlier call -> redundant, confidence high.
      * ``info`` flags ``no_op`` / ``invalid_action`` or an observation identical to the previous
        one -> no effect, confidence medium.
      * the final turn -> the outcome (success: high; failure: medium).
      * otherwise -> the episode outcome as weak evidence (success: medium; failure: low),
        or masked when ``diagnose_uninformative=False``.
    ``target_fn(episode, t) -> dict | None`` may supply a known-correct action (e.g. from an
    env's gold data); it is attached (with confidence high) to every non-successful turn.
    """

    def __init__(self, *, diagnose_uninformative: bool = True,
                 target_fn: Callable[[Episode, int], dict[str, Any] | None] | None = None):
        self.diagnose_uninformative = diagnose_uninformative
        self.target_fn = target_fn

    def reflect(self, episodes: Sequence[Episode]) -> list[Reflection]:
        return [Reflection(ep.episode_id, self.reflect_one(ep), source="rules") for ep in episodes]

    def reflect_one(self, ep: Episode) -> dict[int, TurnReflection]:
        out: dict[int, TurnReflection] = {}
        seen: dict[str, int] = {}
        prev_obs = ep.initial_observation
        last = len(ep.turns) - 1
        for t, turn in enumerate(ep.turns):
            key = _action_key(turn)
            what = _describe(turn)
            refl: TurnReflection | None = None
            flags = [f for f in _NOOP_FLAGS if turn.info.get(f)]
            if turn.action_error:
                kind = turn.action_error.get("kind", "error")
                msg = str(turn.action_error.get("message", ""))[:300]
                refl = TurnReflection(
                    f"Execution error ({kind}), not a decision the environment could act on: {msg} "
                    "The turn was wasted; the reply must be a single well-formed call to an available tool "
                    "with valid arguments.", "high")
            elif key is not None and key in seen:
                refl = TurnReflection(
                    f"Redundant: {what} repeats turn {seen[key] + 1} exactly and cannot yield new "
                    "information; a different action was needed.", "high")
            elif flags or (turn.observation == prev_obs and t > 0):
                refl = TurnReflection(
                    f"{what[0].upper() + what[1:]} had no effect on the environment (the observation did "
                    "not change), so the turn made no progress.", "medium")
            elif t == last and (turn.terminated or turn.truncated):
                if ep.success:
                    refl = TurnReflection(f"Correct: {what} completed the task successfully.", "high")
                elif turn.terminated:
                    refl = TurnReflection(
                        f"Decision error: {what} ended the episode without success "
                        f"(reward {turn.reward:g}).", "medium")
                else:
                    refl = TurnReflection(
                        f"{what[0].upper() + what[1:]} was the last turn before the turn budget ran out "
                        "with the task unfinished; the agent progressed too slowly.", "low")
            elif self.diagnose_uninformative:
                if ep.success:
                    refl = TurnReflection(f"Reasonable: {what} was part of a trajectory that succeeded.", "medium")
                else:
                    refl = TurnReflection(
                        f"No direct error signal for {what}, but the episode ultimately failed, so it "
                        "may not have moved toward the goal.", "low")
            if refl is not None:
                if self.target_fn is not None and not (ep.success and not turn.action_error):
                    tgt = self.target_fn(ep, t)
                    if tgt:
                        refl.next_action_target, refl.confidence = tgt, "high"
                out[t] = refl
            if key is not None and key not in seen and not turn.action_error:
                seen[key] = t
            prev_obs = turn.observation
        return out
