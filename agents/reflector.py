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
    verdict: Literal["error", "good"] | None = None
    """Set by :class:`RuleReflector`: whether the turn was judged a mistake or a right step."""

    def to_dict(self) -> dict[str, Any]:
        d = {"diagnosis": self.diagnosis, "confidence": self.confidence, "next_action_target": self.next_action_target}
        if self.verdict is not None:
            d["verdict"] = self.verdict
        return d


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
    if episode.success:
        outcome = f"The task succeeded; total reward {episode.total_reward:g} after {len(episode.turns)} agent turns."
    elif _episode_unfinished(episode):
        outcome = (f"The episode was stopped after {len(episode.turns)} agent turns, before the task was "
                   "finished (a turn limit, not a verdict that the agent failed).")
    else:
        outcome = (f"The task did not succeed; total reward {episode.total_reward:g} after "
                   f"{len(episode.turns)} agent turns.")
    parts.append(
        f"## Outcome\n{outcome}\n\nNow write the JSON object with keys "
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

    def __init__(self, generate: Any, *, max_retries: int = 2, min_coverage: float = 0.5,
                 max_new_tokens: int = 768, temperature: float = 0.3, max_obs_chars: int = 1500):
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

VISIBLE_INFO_KEYS = ("page", "available_actions", "no_op", "noop", "invalid_action", "invalid")
"""The only ``Turn.info`` keys the rule reflector reads: page state the agent could see. Task internals
(``info["task"]``, ``info["expected"]``, gold actions, reward breakdowns) are never read."""

_NOOP_FLAGS = ("no_op", "noop", "invalid_action", "invalid")
_WEBSHOP_NAV = {"back to search", "< prev", "next >", "description", "features", "reviews", "buy now"}
_WS_INSTRUCTION = re.compile(r"Instruction:\s*\[SEP\]\s*(.*?)\s*\[SEP\]", re.S)
_WS_PRICE_LIMIT = re.compile(r"price lower than\s*\$?([0-9]+(?:\.[0-9]+)?)", re.I)
_WS_PAGE_PRICE = re.compile(r"Price:\s*\$([0-9]+(?:\.[0-9]+)?)")
_WS_LISTED_PRICE = re.compile(r"\$([0-9]+(?:\.[0-9]+)?)")


def _visible(turn: Turn | None) -> dict[str, Any]:
    if turn is None:
        return {}
    return {k: turn.info[k] for k in VISIBLE_INFO_KEYS if k in turn.info}


def _action_key(turn: Turn) -> str | None:
    if turn.parsed_action is None:
        return None
    pa = {k: v for k, v in turn.parsed_action.items() if k != "id"}
    return json.dumps(pa, sort_keys=True, default=str)


def _describe(turn: Turn) -> str:
    pa = turn.parsed_action
    if pa and "name" in pa:
        args = json.dumps(pa.get("arguments", {}), sort_keys=True, default=str)
        return f"the call {pa['name']}({args})"
    if pa and "message" in pa:
        return "a plain message to the user"
    return "an action that could not be parsed"


def _click_target(turn: Turn) -> str | None:
    pa = turn.parsed_action or {}
    if pa.get("name") != "click" or turn.action_error:
        return None
    return str((pa.get("arguments") or {}).get("target", "")).strip().lower() or None


def _episode_unfinished(ep: Episode) -> bool:
    """Stopped by a turn cap, the context window, the budget or an env error, not by the env's verdict."""
    last = ep.turns[-1] if ep.turns else None
    return not ep.success and (last is None or not last.terminated or bool(ep.metadata.get("cut_short")))


class _WebShopView:
    """What a WebShop agent could see: the instruction and the pages, read from observations and the
    visible buttons (``info["available_actions"]``) only."""

    def __init__(self, ep: Episode):
        m = _WS_INSTRUCTION.search(ep.initial_observation)
        self.instruction = m.group(1).lower() if m else ""
        limit = _WS_PRICE_LIMIT.search(self.instruction)
        self.price_limit = float(limit.group(1)) if limit else None

    @staticmethod
    def applies(ep: Episode) -> bool:
        return "Instruction:" in ep.initial_observation and "[SEP]" in ep.initial_observation

    def requested_options(self, buttons: Sequence[str]) -> list[str]:
        """Option buttons of a product page that the instruction asks for (``"<attribute>: <value>"``)."""
        return [b for b in buttons if b not in _WEBSHOP_NAV and f": {b}" in self.instruction]

    def judge(self, ep: Episode, t: int) -> TurnReflection | None:
        """Diagnoses of clicks that contradict the visible instruction (price, requested options)."""
        turn = ep.turns[t]
        target = _click_target(turn)
        before = _visible(ep.turns[t - 1]) if t > 0 else {}
        page_text = ep.turns[t - 1].observation if t > 0 else ep.initial_observation
        if target is None or not before:
            return None
        if target == "buy now" and before.get("page") == "item":
            return self._judge_purchase(ep, t, page_text, before)
        if before.get("page") == "results" and target not in _WEBSHOP_NAV and self.price_limit is not None:
            price = self._listed_price(page_text, target)
            if price is not None and price > self.price_limit:
                return TurnReflection(
                    f"Decision error: opened product {target.upper()}, listed at ${price:.2f}, although the "
                    f"instruction asks for a price lower than ${self.price_limit:.2f}.", "medium", verdict="error")
        return None

    def _judge_purchase(self, ep: Episode, t: int, page_text: str, before: dict[str, Any]) -> TurnReflection | None:
        start = t - 1    # the turn that opened this product page (option clicks keep it on "item")
        while start > 0 and _visible(ep.turns[start - 1]).get("page") == "item":
            start -= 1
        clicked = {_click_target(ep.turns[k]) for k in range(start + 1, t)}
        buttons = list((before.get("available_actions") or {}).get("clickables") or [])
        missing = [o for o in self.requested_options(buttons) if o not in clicked]
        if missing:
            return TurnReflection(
                "Decision error: clicked buy now without selecting " + ", ".join(repr(o) for o in missing)
                + ", which the instruction asks for and the product page offers.", "high", verdict="error")
        m = _WS_PAGE_PRICE.search(page_text)
        if m and self.price_limit is not None and float(m.group(1)) > self.price_limit:
            return TurnReflection(
                f"Decision error: bought at ${float(m.group(1)):.2f}, although the instruction asks for a price "
                f"lower than ${self.price_limit:.2f}.", "high", verdict="error")
        return None

    @staticmethod
    def _listed_price(results_page: str, product: str) -> float | None:
        segs = [s.strip() for s in results_page.split("[SEP]")]
        for i, s in enumerate(segs):
            if s.lower() == product:
                for nxt in segs[i + 1:i + 4]:
                    m = _WS_LISTED_PRICE.match(nxt)
                    if m:
                        return float(m.group(1))
        return None


def _is_option_selection(ep: Episode, t: int) -> bool:
    """A click on a product page that stays on it: selecting an option (the text page does not show the
    selection, so an unchanged observation is expected)."""
    target = _click_target(ep.turns[t])
    before = _visible(ep.turns[t - 1]) if t > 0 else {}
    return (target is not None and target not in _WEBSHOP_NAV and before.get("page") == "item"
            and _visible(ep.turns[t]).get("page") == "item")


class RuleReflector:
    """Diagnoses from what the agent could see (observations, visible page state); never needs a model
    and never reads task internals or gold data (see :data:`VISIBLE_INFO_KEYS`).

    Per turn, the first rule that fires:
      * ``action_error`` (execution error: parse / no_action / unknown_tool / invalid_arguments /
        too_many_calls) -> error, confidence high; the env's message is quoted.
      * the same action taken again *on the same observation* -> redundant, high. (Repeating an action on
        a different page, e.g. ``click[next >]`` while paging, is not redundant.)
      * WebShop: a click that contradicts the visible instruction (buying without a requested option
        the product page offers, a price above the stated limit) -> decision error.
      * ``info`` flags ``no_op`` / ``invalid_action``, or a tool observation identical to the previous
        one (except selecting an option on a WebShop product page) -> no effect, medium.
      * the final turn of a finished episode -> the outcome (success: good, high; failure: error, medium).
        Episodes cut by a turn cap, the context window or the budget get no outcome verdict.
      * otherwise nothing (the turn is masked), or with ``diagnose_uninformative=True`` a weak note from the
        outcome (success: medium; failure: low).
    ``target_fn(episode, t) -> dict | None`` may supply a known-correct action (e.g. from an env's gold data,
    for oracle ablations only); it is attached (confidence high) to every turn judged an error.
    """

    def __init__(self, *, diagnose_uninformative: bool = False,
                 target_fn: Callable[[Episode, int], dict[str, Any] | None] | None = None):
        self.diagnose_uninformative = diagnose_uninformative
        self.target_fn = target_fn

    def reflect(self, episodes: Sequence[Episode]) -> list[Reflection]:
        return [Reflection(ep.episode_id, self.reflect_one(ep), source="rules") for ep in episodes]

    def reflect_one(self, ep: Episode) -> dict[int, TurnReflection]:
        out: dict[int, TurnReflection] = {}
        seen: dict[tuple[str, str], int] = {}
        webshop = _WebShopView(ep) if _WebShopView.applies(ep) else None
        prev_obs = ep.initial_observation
        for t, turn in enumerate(ep.turns):
            refl = self._judge(ep, t, seen, prev_obs, webshop)
            if refl is not None:
                if self.target_fn is not None and refl.verdict == "error":
                    tgt = self.target_fn(ep, t)
                    if tgt:
                        refl.next_action_target, refl.confidence = tgt, "high"
                out[t] = refl
            key = _action_key(turn)
            if key is not None and not turn.action_error:
                seen.setdefault((key, prev_obs), t)
            prev_obs = turn.observation
        return out

    def _judge(self, ep: Episode, t: int, seen: dict[tuple[str, str], int], prev_obs: str,
               webshop: _WebShopView | None) -> TurnReflection | None:
        turn = ep.turns[t]
        what = _describe(turn)
        key = _action_key(turn)
        if turn.action_error:
            kind = turn.action_error.get("kind", "error")
            msg = str(turn.action_error.get("message", ""))[:300]
            return TurnReflection(
                f"Execution error ({kind}), not a decision the environment could act on: {msg} "
                "The turn was wasted; the reply must be a single well-formed call to an available tool "
                "with valid arguments.", "high", verdict="error")
        if key is not None and (key, prev_obs) in seen:
            return TurnReflection(
                f"Redundant: {what} repeats turn {seen[(key, prev_obs)] + 1} on the same observation and cannot "
                "yield new information; a different action was needed.", "high", verdict="error")
        judged = webshop.judge(ep, t) if webshop is not None else None
        if judged is not None:
            return judged
        flags = [f for f in _NOOP_FLAGS if _visible(turn).get(f)]
        unchanged = t > 0 and turn.observation == prev_obs and turn.observation_role == "tool"
        if flags or (unchanged and not _is_option_selection(ep, t)):
            return TurnReflection(
                f"{what[0].upper() + what[1:]} had no effect on the environment (the observation did "
                "not change), so the turn made no progress.", "medium", verdict="error")
        if t == len(ep.turns) - 1 and not _episode_unfinished(ep):
            if ep.success:
                return TurnReflection(f"Correct: {what} completed the task successfully.", "high", verdict="good")
            return TurnReflection(f"Decision error: {what} ended the episode without success "
                                  f"(reward {turn.reward:g}).", "medium", verdict="error")
        if not self.diagnose_uninformative:
            return None
        if ep.success:
            return TurnReflection(f"Reasonable: {what} was part of a trajectory that succeeded.", "medium")
        return TurnReflection(f"No direct error signal for {what}.", "low")
