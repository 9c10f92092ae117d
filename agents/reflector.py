"""Hindsight reflectors: turn a finished episode into one diagnosis per assistant turn.

A reflector returns, for each episode, a :class:`Reflection` mapping turn positions
(0-based, the position in ``Episode.turns``) to a :class:`TurnReflection`. A turn with
no usable diagnosis is simply absent, and the trainer leaves it out of the loss.

Three kinds ship here:

* :class:`LLMReflector` — one generation over the whole trajectory (by default with the
  policy being trained, or any other policy / text generator) returning strict JSON
  ``{"turn1": {"diagnosis": str, "confidence": "high|medium|low",
  "next_action_target": "<the action, in the env's own syntax>" | null}, ...}``; parsed defensively by
  :func:`parse_reflection` (code fences, prose around the JSON, truncated JSON, wrong key spellings,
  targets as action text or as ``{"name", "arguments"}`` objects). Its generation budget grows with
  the number of turns, and a retry asks only for the turns still missing.
* :class:`~hero_gym.agents.rule_reflector.RuleReflector` — diagnoses and targets written from what the
  agent could see (action errors, repeated calls, no-op observations, the visible page, the final
  outcome). No model needed: for tiny models, tests and as an ablation.
* Anything implementing :class:`Reflector` (one method, ``reflect``), e.g.
  :class:`FunctionReflector` wrapping a plain function.

Targets are kept twice: ``next_action_target`` (``{"name", "arguments"}`` or ``{"message"}``) and
``target_text``, the same action as the agent writes it in its env (``click[...]``, a ``<tool_call>``
block, a message): see :mod:`hero_gym.agents.targets`.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from hero_gym.records import Episode

from .targets import action_syntax, parse_target, render_action, syntax_hint

Confidence = Literal["high", "medium", "low"]
_CONFIDENCES = ("high", "medium", "low")

__all__ = [
    "Confidence",
    "TurnReflection",
    "Reflection",
    "Reflector",
    "FunctionReflector",
    "RuleReflector",
    "VISIBLE_INFO_KEYS",
    "LLMReflector",
    "REFLECTION_RULES",
    "LEGACY_REFLECTION_RULES",
    "build_reflection_messages",
    "parse_reflection",
    "extract_json_object",
    "episode_unfinished",
    "fill_target_text",
    "reflection_budget",
]


@dataclass
class TurnReflection:
    """The hindsight diagnosis of one assistant turn.

    ``next_action_target`` is the corrected action (``{"name": ..., "arguments": {...}}`` or
    ``{"message": ...}``) when the reflector judged it unambiguous, else ``None``; ``target_text`` is the
    same action written in the env's own syntax (what the note shows).
    """

    diagnosis: str
    confidence: Confidence = "low"
    next_action_target: dict[str, Any] | None = None
    verdict: Literal["error", "good"] | None = None
    """Set by the rule reflector: whether the turn was judged a mistake or a right step."""
    target_text: str | None = None
    """The target as the agent would write it in its env (``click[b0abc]``, a ``<tool_call>`` block...)."""
    target_confidence: Confidence | None = None
    """The target's own confidence when the reflector gives one (``None``: ``confidence`` applies)."""
    target_source: Literal["visible", "given", "model"] | None = None
    """Where the target came from: visible information (rules), a ``target_fn`` (e.g. an oracle), a model."""
    echo_diagnosis: str | None = None
    """The rule reflector's legacy wording, which quotes the env's message and the action (the
    ``legacy`` / ``echo_target`` note styles); ``None``: ``diagnosis`` is the only wording."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"diagnosis": self.diagnosis, "confidence": self.confidence,
                             "next_action_target": self.next_action_target}
        for k in ("verdict", "target_text", "target_confidence", "target_source", "echo_diagnosis"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d


@dataclass
class Reflection:
    """Per-turn diagnoses of one episode. ``turns`` keys are 0-based turn positions."""

    episode_id: str
    turns: dict[int, TurnReflection] = field(default_factory=dict)
    source: str = ""
    raw: str | None = None          # raw LLM text (the attempt that gave the most turns), for auditing
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


def fill_target_text(ep: Episode, turns: dict[int, TurnReflection]) -> None:
    """Write every target that has no ``target_text`` in ``ep``'s action syntax (in place); a target that
    cannot be written there (a message in WebShop) is dropped."""
    syntax = None
    for refl in turns.values():
        if refl.next_action_target and refl.target_text is None:
            syntax = syntax or action_syntax(ep)
            refl.target_text = render_action(refl.next_action_target, syntax)
            if refl.target_text is None:
                refl.next_action_target = None


def episode_unfinished(ep: Episode) -> bool:
    """Stopped by a turn cap, the context window, the budget or an env error, not by the env's verdict."""
    last = ep.turns[-1] if ep.turns else None
    return not ep.success and (last is None or not last.terminated or bool(ep.metadata.get("cut_short")))


_episode_unfinished = episode_unfinished   # the old private name


class FunctionReflector:
    """Wrap ``fn(episode) -> dict[int, TurnReflection]`` (0-based keys) as a :class:`Reflector`. Targets
    without ``target_text`` are written in the episode's action syntax."""

    def __init__(self, fn: Callable[[Episode], dict[int, TurnReflection]], name: str = "function"):
        self.fn, self.name = fn, name

    def reflect(self, episodes: Sequence[Episode]) -> list[Reflection]:
        out = []
        for ep in episodes:
            turns = dict(self.fn(ep))
            fill_target_text(ep, turns)
            out.append(Reflection(ep.episode_id, turns, source=self.name))
        return out


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


def _norm_entry(v: Any, syntax: str | None) -> TurnReflection | None:
    if not isinstance(v, dict):
        return None
    diag = v.get("diagnosis")
    if not isinstance(diag, str) or not diag.strip():
        return None
    conf = str(v.get("confidence", "low")).strip().lower()
    if conf not in _CONFIDENCES:
        conf = "low"
    raw = v.get("next_action_target")
    if syntax is None:   # no env syntax known: keep the object form (or a message)
        target = raw if isinstance(raw, dict) and raw else None
        if target is None and isinstance(raw, str) and raw.strip() and raw.strip().lower() not in ("null", "none"):
            obj = extract_json_object(raw)
            target = obj if isinstance(obj, dict) else {"message": raw.strip()}
        return TurnReflection(diag.strip(), conf, target)  # type: ignore[arg-type]
    target, text = parse_target(raw, syntax)
    return TurnReflection(diag.strip(), conf, target, target_text=text,  # type: ignore[arg-type]
                          target_source="model" if target else None)


def parse_reflection(text: str, n_turns: int, syntax: str | None = None) -> dict[int, TurnReflection]:
    """Parse reflector output into ``{0-based turn: TurnReflection}``; unusable turns are absent.

    Accepts the schema object (keys ``turn1``, ``Turn 1``, ``turn_1``…), or a list of entries
    carrying a ``"turn"`` number. Entries without a non-empty string diagnosis, keys that do
    not name a turn, and turn numbers outside ``1..n_turns`` are dropped. An unknown
    confidence becomes ``"low"``. With ``syntax`` (the env's action syntax, see
    :func:`~hero_gym.agents.targets.action_syntax`) a target is read as the action text itself or as an
    object and also written in that syntax (``target_text``); one that is not an action there is dropped.
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
            entry = _norm_entry(v, syntax)
            if entry is not None:
                out[num - 1] = entry
    return out


# --------------------------------------------------------------------------------------
# The LLM reflector
# --------------------------------------------------------------------------------------

_RULES_HEAD = """\
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
"""
_RULE6_LEGACY = """\
6. Give "next_action_target" (the action the agent should have taken at that turn, as an object
   such as {"name": "<tool>", "arguments": {...}} or {"message": "<text>"}) only when the correct
   action is clear beyond doubt; then set "confidence" to "high". When it is not clear, set
   "next_action_target" to null and "confidence" to "medium" or "low".
7. Keep each diagnosis to one or two sentences.
"""
_RULE6 = """\
6. Give "next_action_target" (the action the agent should have taken at that turn) only when the
   correct action is clear beyond doubt; then set "confidence" to "high". When it is not clear, set
   "next_action_target" to null and "confidence" to "medium" or "low".
7. Keep each diagnosis to one or two sentences.
8. Write "next_action_target" as a string holding exactly the reply the agent should have sent, in
   the environment's own action syntax (given under "Action syntax" below), so that it could be
   sent as it is.
9. Do not repeat the agent's wrong action, its wrong argument or the environment's error message
   word for word. Name the kind of mistake and the correction instead (for example "the clicked
   button is not on this page", not the button that was clicked).
"""
_RULES_TAIL = """
Answer with one JSON object and nothing else: no prose, no code fences. Use exactly these keys:
{"turn1": {"diagnosis": "...", "confidence": "high" | "medium" | "low", "next_action_target": %s},
 "turn2": {...}, ...} with one key per agent turn you are asked about."""

REFLECTION_RULES = _RULES_HEAD + _RULE6 + _RULES_TAIL % '"<the action>" | null'
"""The reflector's system message: the seed rules 1-7, plus the env's action syntax for targets (8) and
no verbatim echo of the mistake (9)."""
LEGACY_REFLECTION_RULES = _RULES_HEAD + _RULE6_LEGACY + (_RULES_TAIL % "{...} | null").replace(
    " you are asked about", "")
"""The earlier system message (targets as JSON objects, no echo rule): the ``legacy`` style."""


def _clip(s: str, n: int | None) -> str:
    s = s if s is not None else ""
    return s if n is None or len(s) <= n else s[: n // 2] + f" …[{len(s) - n} chars cut]… " + s[-n // 2:]


def build_reflection_messages(
    episode: Episode,
    *,
    max_obs_chars: int = 1500,
    max_system_chars: int | None = None,
    turns: Sequence[int] | None = None,
    style: Literal["current", "legacy"] = "current",
) -> list[dict[str, str]]:
    """The chat sent to the reflector: the rules as system message, the trajectory as user message.

    The agent's instructions (e.g. the Tau-bench policy) are shown in full unless ``max_system_chars``
    is set; observations and actions are clipped to ``max_obs_chars``. ``turns`` (0-based) are the turns
    asked about (default: all; a retry asks only for the missing ones). ``style="legacy"``: the rules and
    earlier request (no action syntax, no echo rule)."""
    if style not in ("current", "legacy"):
        raise ValueError(f"style must be 'current' or 'legacy', got {style!r}")
    parts: list[str] = []
    if episode.system_prompt:
        parts.append("## Agent instructions\n" + _clip(episode.system_prompt, max_system_chars))
    if episode.tools:
        names = [t.get("function", t).get("name", "?") for t in episode.tools]
        parts.append("## Tools available\n" + ", ".join(map(str, names)))
    if style == "current":
        parts.append("## Action syntax\n" + syntax_hint(action_syntax(episode)))
    parts.append("## Start of the interaction\n" + _clip(episode.initial_observation, max_obs_chars))
    for i, turn in enumerate(episode.turns):
        err = f"\n(execution error: {turn.action_error.get('kind')})" if turn.action_error else ""
        parts.append(
            f"## Turn {i + 1}\nAgent action:\n{_clip(turn.action_text, max_obs_chars)}{err}\n"
            f"Observation after it ({turn.observation_role}):\n{_clip(turn.observation, max_obs_chars)}"
        )
    if episode.success:
        outcome = f"The task succeeded; total reward {episode.total_reward:g} after {len(episode.turns)} agent turns."
    elif episode_unfinished(episode):
        outcome = (f"The episode was stopped after {len(episode.turns)} agent turns, before the task was "
                   "finished (a turn limit, not a verdict that the agent failed).")
    else:
        outcome = (f"The task did not succeed; total reward {episode.total_reward:g} after "
                   f"{len(episode.turns)} agent turns.")
    asked = list(range(len(episode.turns))) if turns is None else sorted(turns)
    keys = ", ".join(f'"turn{i + 1}"' for i in asked)
    if len(asked) < len(episode.turns):
        request = f"Now write the JSON object with only these keys (the other turns are already reviewed): {keys}."
    else:
        request = f"Now write the JSON object with keys {keys}."
    parts.append(f"## Outcome\n{outcome}\n\n{request}")
    rules = REFLECTION_RULES if style == "current" else LEGACY_REFLECTION_RULES
    return [{"role": "system", "content": rules}, {"role": "user", "content": "\n\n".join(parts)}]


def reflection_budget(n_turns: int, *, tokens_per_turn: int = 80, base_tokens: int = 32,
                      max_new_tokens: int | None = None) -> int:
    """New tokens for a reflection over ``n_turns`` turns: ``base_tokens + tokens_per_turn * n_turns``,
    at most ``max_new_tokens`` (``None``: no cap). One turn's entry (keys, a one- or two-sentence
    diagnosis, a target) takes ~40-80 tokens with the SmolLM2 / Qwen tokenizers."""
    budget = base_tokens + tokens_per_turn * max(1, n_turns)
    return budget if max_new_tokens is None else min(budget, max_new_tokens)


GenerateFn = Callable[[list[list[dict[str, str]]], list[int]], list[str]]


class LLMReflector:
    """Reflect with a language model: one generation per episode, batched across episodes.

    Args:
        generate: either a callable ``generate(list_of_chats) -> list_of_texts`` (it gets the per-chat
            token budgets as ``max_new_tokens=[...]`` when it takes that keyword) or a policy object (e.g.
            :class:`hero_gym.agents.policy.HFPolicy`) exposing ``generate_text(chats, max_new_tokens=...,
            temperature=...)`` or a ``.chat(...)`` method; see :func:`_as_generate_fn`.
        max_retries: extra attempts for episodes whose output covered fewer than ``min_coverage`` of their
            turns (bounded; sampling makes a retry differ). A retry shows the whole trajectory but asks
            only for the missing turns, with their budget; turns already diagnosed are kept. Turns still
            missing stay masked.
        min_coverage: retry while fewer than this fraction of an episode's turns parsed.
        tokens_per_turn / base_tokens / max_new_tokens: the generation budget of an episode,
            :func:`reflection_budget` (``base + per_turn * turns``, capped by ``max_new_tokens``; ``None``:
            no cap). With an HF policy each row also stops where the model's context ends; an episode whose
            prompt alone fills the context is not reflected (its turns stay masked).
        max_system_chars: ``None`` (default) shows the agent's instructions in full.
        style: ``"current"`` (targets in the env's syntax, no echo of the mistake) or ``"legacy"`` (the
            earlier prompt).
    """

    def __init__(self, generate: Any, *, max_retries: int = 1, min_coverage: float = 0.5,
                 max_new_tokens: int | None = None, tokens_per_turn: int = 80, base_tokens: int = 32,
                 temperature: float = 0.3, max_obs_chars: int = 1500, max_system_chars: int | None = None,
                 style: Literal["current", "legacy"] = "current"):
        if tokens_per_turn < 1 or base_tokens < 0 or (max_new_tokens is not None and max_new_tokens < 1):
            raise ValueError("tokens_per_turn >= 1, base_tokens >= 0 and max_new_tokens >= 1 (or None) required")
        if style not in ("current", "legacy"):
            raise ValueError(f"style must be 'current' or 'legacy', got {style!r}")
        self.generate = _as_generate_fn(generate, temperature=temperature)
        self.max_retries = max_retries
        self.min_coverage = min_coverage
        self.max_obs_chars = max_obs_chars
        self.max_system_chars = max_system_chars
        self.style = style
        self.budget = lambda n: reflection_budget(n, tokens_per_turn=tokens_per_turn, base_tokens=base_tokens,
                                                  max_new_tokens=max_new_tokens)

    def reflect(self, episodes: Sequence[Episode]) -> list[Reflection]:
        results = [Reflection(ep.episode_id, source="llm") for ep in episodes]
        syntaxes = [action_syntax(ep) if self.style == "current" else None for ep in episodes]
        todo = {i: list(range(len(ep.turns))) for i, ep in enumerate(episodes) if ep.turns}
        for _attempt in range(1 + self.max_retries):
            if not todo:
                break
            order = sorted(todo)
            chats = [build_reflection_messages(episodes[i], max_obs_chars=self.max_obs_chars, turns=todo[i],
                                               max_system_chars=self.max_system_chars, style=self.style)
                     for i in order]
            texts = self.generate(chats, [self.budget(len(todo[i])) for i in order])
            again: dict[int, list[int]] = {}
            for i, text in zip(order, texts):
                n, res, asked = len(episodes[i].turns), results[i], set(todo[i])
                parsed = parse_reflection(text, n, syntaxes[i])
                new = {t: r for t, r in parsed.items() if t in asked}
                res.attempts += 1
                if res.raw is None or len(new) > 0:
                    res.raw = text if res.raw is None else res.raw + "\n\n[retry]\n" + text
                res.turns.update(new)
                if len(res.turns) < max(1, self.min_coverage * n):
                    again[i] = [t for t in range(n) if t not in res.turns]
            todo = again
        for ep, res in zip(episodes, results):
            res.turns = dict(sorted(res.turns.items()))
            if self.style == "legacy":
                for r in res.turns.values():
                    r.target_source = "model" if r.next_action_target else None
            else:
                fill_target_text(ep, res.turns)
        return results


def _accepts_budget(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "max_new_tokens" or p.kind == p.VAR_KEYWORD for p in params)


def _as_generate_fn(obj: Any, *, temperature: float) -> GenerateFn:
    """Adapt a policy or a plain callable into ``(chats, budgets) -> texts``.

    Accepted: an object with ``generate_text``/``chat``/``generate_chat(chats, max_new_tokens=,
    temperature=)`` (given the largest budget of the batch); an :class:`~hero_gym.agents.policy.HFPolicy`-like
    object with ``tokenizer`` and token-level ``generate(contexts, SamplingConfig, max_new_tokens=[...])``
    (chats rendered with ``ChatRenderer``; each row gets its own budget, cut to the room left in the model's
    context); or a plain callable ``chats -> texts`` (given ``max_new_tokens=[per-chat budgets]`` when it
    takes that keyword).
    """
    if hasattr(obj, "tokenizer") and hasattr(obj, "generate") and not any(
            callable(getattr(obj, m, None)) for m in ("generate_text", "chat", "generate_chat")):
        from hero_gym.chat import ChatRenderer

        from .policy import SamplingConfig
        from .rollout import policy_context_window

        renderer = ChatRenderer(obj.tokenizer, check=False)
        context = policy_context_window(obj)     # vLLM's max_model_len, or the model's position limit

        def call_policy(chats, budgets):
            ctxs = [renderer.prompt_ids(c) for c in chats]
            caps = [b if context is None else min(b, int(context) - len(c)) for b, c in zip(budgets, ctxs)]
            rows = [k for k, cap in enumerate(caps) if cap > 0]
            out = [""] * len(chats)
            if rows:
                gens = obj.generate([ctxs[k] for k in rows],
                                    SamplingConfig(max_new_tokens=max(caps[k] for k in rows), temperature=temperature),
                                    max_new_tokens=[caps[k] for k in rows])
                for k, g in zip(rows, gens):
                    out[k] = g.text
            return out
        return call_policy
    for meth in ("generate_text", "chat", "generate_chat"):
        fn = getattr(obj, meth, None)
        if callable(fn):
            def call(chats, budgets, _fn=fn):
                out = _fn(chats, max_new_tokens=max(budgets), temperature=temperature)
                return [o if isinstance(o, str) else getattr(o, "text", str(o)) for o in out]
            return call
    if callable(obj):
        if _accepts_budget(obj):
            return lambda chats, budgets: obj(chats, max_new_tokens=list(budgets))
        return lambda chats, budgets: obj(chats)
    raise TypeError("LLMReflector needs a callable(chats)->texts or a policy with generate_text/chat")


from .rule_reflector import VISIBLE_INFO_KEYS, RuleReflector  # noqa: E402  (re-exported; it builds on the types above)
