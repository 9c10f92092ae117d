"""Hindsight targets: the action a reflector proposes for a mistaken turn, from visible information only,
written in the env's own action syntax.

Two rules:

* **Visible information only.** A target follows from what the agent could see before the turn (the
  first observation, the pages or tool outputs since, the buttons listed on the page), never from the
  task's hidden goal. For WebShop, :func:`webshop_pages` rebuilds the page the agent was on before
  every turn from the episode's observations and visible buttons, and :func:`instruction_action` is
  :class:`~hero_gym.envs.webshop.expert.InstructionExpert`'s rule applied to that page: search the
  instruction; on a results page open the first product whose shown price is under the instruction's
  limit (the first product when none is); on a product page click the first option value the
  instruction names among the option types not chosen yet, else buy; on a sub-page go back. It gives
  the same action as ``InstructionExpert`` in every state (pinned by the tests), but reads only the
  episode record.
* **The env's own syntax.** A target is shown to the self-teacher exactly as the agent would have to
  write it (``click[b0abc12345]`` for WebShop, a ``<tool_call>`` block or the plain text of a message
  for Tau-bench with the Hermes parser), so the teacher can copy it: :func:`action_syntax` finds the
  syntax of an episode, :func:`render_action` writes an action in it, :func:`parse_target` reads a
  model-written target back (either the action text itself or the old ``{"name", "arguments"}`` /
  ``{"message"}`` objects).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hero_gym.parsers import CALL_FORMATS, parse_reply
from hero_gym.records import Episode, Turn
from hero_gym.tools import ToolCallError

__all__ = [
    "SYNTAXES",
    "action_syntax",
    "render_action",
    "parse_target",
    "same_action",
    "syntax_hint",
    "is_webshop",
    "WebShopPage",
    "webshop_instruction",
    "webshop_pages",
    "price_limit",
    "instruction_action",
]

SYNTAXES = ("bracket", "hermes", "json", "openai", "functional")
"""The action syntaxes targets are written in (the names of :mod:`hero_gym.parsers`; ``auto`` reads hermes)."""

_WS_INSTRUCTION = re.compile(r"Instruction:\s*\[SEP\]\s*(.*?)\s*\[SEP\]", re.S)
_PRICE_LIMIT = re.compile(r"price lower than \$?(\d+(?:\.\d+)?)")   # InstructionExpert's
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_FUNCTIONAL_START = re.compile(r"[A-Za-z_]\w*\s*\(")
_BRACKET_START = re.compile(r"(search|click)\[", re.I)
WEBSHOP_NAV = frozenset({"back to search", "< prev", "next >", "description", "features", "reviews", "buy now"})
"""WebShop buttons that are not products or option values."""
SEP = " [SEP] "


# --------------------------------------------------------------------------------------
# Syntax
# --------------------------------------------------------------------------------------

def is_webshop(ep: Episode) -> bool:
    """Whether ``ep`` is a WebShop episode in a text observation mode (the instruction header is shown)."""
    return "Instruction:" in ep.initial_observation and "[SEP]" in ep.initial_observation


def action_syntax(ep: Episode) -> str:
    """The action syntax of ``ep``'s env, one of :data:`SYNTAXES`.

    In order: ``ep.metadata["parser"]`` when a rollout recorded it; ``"bracket"`` for WebShop; the format
    of the episode's own well-formed tool calls; the call-format hint in the system message
    (``metadata["system_message"]``); else ``"hermes"`` (the default parser of the tool-calling envs)."""
    meta = ep.metadata.get("parser")
    if isinstance(meta, str) and meta in SYNTAXES + ("auto",):
        return "hermes" if meta == "auto" else meta
    if is_webshop(ep) or "webshop" in ep.env_id.lower():
        return "bracket"
    for turn in ep.turns:
        if turn.action_error is None and turn.parsed_action and "name" in turn.parsed_action:
            s = turn.action_text.strip()
            if "<tool_call>" in s:
                return "hermes"
            if s.startswith("{") or s.startswith("```"):
                return "openai" if '"tool_calls"' in s else "json"
            if _BRACKET_START.match(s):
                return "bracket"
            if _FUNCTIONAL_START.match(s):
                return "functional"
    system = str(ep.metadata.get("system_message") or "")
    for name in ("bracket", "openai", "functional", "json", "hermes"):
        if CALL_FORMATS[name] in system:
            return name
    return "hermes"


def syntax_hint(syntax: str) -> str:
    """One line telling a reflector how an action is written in ``syntax``."""
    if syntax == "bracket":
        return ("Actions are written search[<query>] or click[<button text>], exactly as the agent writes them; "
                "there are no messages.")
    call = render_action({"name": "<tool name>", "arguments": {"argument": "<value>"}}, syntax)
    return f"A tool call is written exactly as:\n{call}\nA message to the user is written as its plain text."


def render_action(action: dict[str, Any] | None, syntax: str) -> str | None:
    """``action`` (``{"name", "arguments"}`` or ``{"message"}``) as the reply text an agent writes in ``syntax``.

    ``None`` when the action cannot be written there (a message, or a tool other than search/click, in
    WebShop's bracket syntax; a functional call with an argument name that is not an identifier)."""
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown action syntax {syntax!r}; known: {', '.join(SYNTAXES)}")
    if not isinstance(action, dict):
        return None
    if "name" not in action:
        msg = action.get("message")
        return None if syntax == "bracket" or not isinstance(msg, str) or not msg.strip() else msg.strip()
    name, args = str(action["name"]), action.get("arguments") or {}
    if not isinstance(args, dict):
        return None
    if syntax == "bracket":
        key = {"search": "query", "click": "target"}.get(name)
        if key is None or not str(args.get(key, "")).strip():
            return None
        return f"{name}[{str(args[key]).strip()}]"
    if syntax == "hermes":
        return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}, ensure_ascii=False) + "\n</tool_call>"
    if syntax == "json":
        return json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    if syntax == "openai":
        fn = {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}
        return json.dumps({"tool_calls": [{"type": "function", "function": fn}]}, ensure_ascii=False)
    if not all(isinstance(k, str) and k.isidentifier() for k in args):
        return None
    return f"{name}(" + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in args.items()) + ")"


def _action_of(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("name"), str) and obj["name"].strip():
        args = obj.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        return {"name": obj["name"].strip(), "arguments": args if isinstance(args, dict) else {}}
    if isinstance(obj.get("message"), str) and obj["message"].strip():
        return {"message": obj["message"].strip()}
    return None


def parse_target(value: Any, syntax: str) -> tuple[dict[str, Any] | None, str | None]:
    """A reflector's target -> ``(action, action text in syntax)``, or ``(None, None)`` when unusable.

    Accepts the action text itself (``"click[buy now]"``, a ``<tool_call>`` block, a message) or an
    object ``{"name": ..., "arguments": {...}}`` / ``{"message": ...}`` (also as a JSON string). A text
    that holds no call is a message, except in the bracket syntax (WebShop has no messages)."""
    if value is None:
        return None, None
    if isinstance(value, str):
        s = value.strip()
        if not s or s.lower() in ("null", "none"):
            return None, None
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and "tool_calls" not in obj:
                return parse_target(obj, syntax)
        try:
            parsed = parse_reply(s, syntax)
        except ToolCallError:
            return None, None
        if parsed.calls:
            call = parsed.calls[0]
            action: dict[str, Any] | None = {"name": call.name, "arguments": dict(call.arguments)}
        elif syntax == "bracket":
            return None, None
        else:
            action = {"message": s}
    else:
        action = _action_of(value)
    text = render_action(action, syntax)
    return (action, text) if text is not None else (None, None)


def _norm(action: dict[str, Any] | None) -> Any:
    if not action:
        return None
    if "name" in action:
        args = {k: (str(v).strip().lower() if isinstance(v, str) else v) for k, v in (action.get("arguments") or {}).items()}
        return ("call", str(action["name"]).lower(), json.dumps(args, sort_keys=True, default=str))
    return ("message", " ".join(str(action.get("message", "")).split()))


def same_action(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two actions are the same after normalisation (tool name + arguments, string values stripped
    and lower-cased; or the message text with whitespace collapsed)."""
    return a is not None and b is not None and _norm(a) == _norm(b)


# --------------------------------------------------------------------------------------
# WebShop: the visible page before every turn, and the instruction-following policy
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WebShopPage:
    """The page the agent saw before a turn, rebuilt from the episode record.

    ``kind``: search / results / item / sub (``"unknown"`` when the record lacks ``info["page"]``);
    ``segments``: the page's text segments; ``buttons``: its lower-cased clickable buttons; ``chosen``:
    the option values chosen on this product visit, as ``(option type, value)`` pairs (selecting an
    option does not change the text page, so these are tracked from the episode's own clicks)."""

    kind: str
    segments: tuple[str, ...]
    buttons: tuple[str, ...]
    chosen: tuple[tuple[str, str], ...] = ()

    def products(self) -> list[tuple[str, float | None]]:
        """Results page: ``(product button, first number of its shown price)`` in page order."""
        out: list[tuple[str, float | None]] = []
        buttons = set(self.buttons)
        for i, seg in enumerate(self.segments):
            b = seg.lower()
            if b in buttons and b not in WEBSHOP_NAV and all(p != b for p, _ in out):
                tag = self.segments[i + 2] if i + 2 < len(self.segments) else ""
                num = _NUMBER.findall(tag) if tag.startswith("$") else []
                out.append((b, float(num[0]) if num else None))
        return out

    def option_groups(self) -> list[tuple[str, list[str]]]:
        """Product page: ``(option type, [values])`` in page order (a text segment followed by buttons)."""
        segs, buttons = self.segments, set(self.buttons)
        try:
            i = next(k for k, s in enumerate(segs) if s.lower() == "< prev") + 1
        except StopIteration:
            return []
        groups: list[tuple[str, list[str]]] = []
        while i < len(segs) and segs[i].lower() not in buttons:
            j, values = i + 1, []
            while j < len(segs) and segs[j].lower() in buttons and segs[j].lower() not in WEBSHOP_NAV:
                values.append(segs[j].lower())
                j += 1
            if not values:
                break
            groups.append((segs[i], values))
            i = j
        return groups

    def price(self) -> float | None:
        """Product page: the first number of the shown ``Price: ...``."""
        for seg in self.segments:
            if seg.startswith("Price:"):
                num = _NUMBER.findall(seg)
                return float(num[0]) if num else None
        return None


def webshop_instruction(ep: Episode) -> str:
    """The instruction shown in the first observation (``""`` when there is none)."""
    m = _WS_INSTRUCTION.search(ep.initial_observation)
    return m.group(1) if m else ""


def price_limit(instruction: str) -> float | None:
    """The instruction's price limit (``price lower than X dollars``), if it states one."""
    m = _PRICE_LIMIT.search(instruction)
    return float(m.group(1)) if m else None


def _click(turn: Turn) -> str | None:
    pa = turn.parsed_action or {}
    if pa.get("name") != "click" or turn.action_error:
        return None
    return str((pa.get("arguments") or {}).get("target", "")).strip().lower() or None


def webshop_pages(ep: Episode) -> list[WebShopPage]:
    """The page before each turn of a WebShop text-mode episode (``len(ep.turns)`` pages).

    Reads only the record: the observations, the visible buttons (``info["available_actions"]``) and page
    kind (``info["page"]``) of each step, and the episode's own clicks. An erroneous step leaves the page
    as it was (the env does not move), so its error text is never taken for the page."""
    pages: list[WebShopPage] = []
    kind, segs, buttons, chosen = "search", tuple(ep.initial_observation.split(SEP)), (), {}
    for turn in ep.turns:
        page = WebShopPage(kind, segs, buttons, tuple(chosen.items()))
        pages.append(page)
        if turn.action_error:
            continue
        new_kind = turn.info.get("page")
        avail = turn.info.get("available_actions") or {}
        target = _click(turn)
        if not isinstance(new_kind, str):
            new_kind = "unknown"
        if kind == "item" and new_kind == "item" and target is not None:
            for otype, values in page.option_groups():
                if target in values:
                    chosen[otype] = target
        elif not (kind in ("item", "sub") and new_kind in ("item", "sub")):
            chosen = {}      # a new product visit (or none) starts with no option chosen
        kind, segs = new_kind, tuple(turn.observation.split(SEP))
        buttons = tuple(str(b).lower() for b in (avail.get("clickables") or []))
    return pages


def instruction_action(page: WebShopPage, instruction: str) -> str | None:
    """``InstructionExpert``'s action on ``page`` (bracket syntax), or ``None`` on an unknown page."""
    if page.kind == "search":
        return f"search[{instruction}]" if instruction else None
    if page.kind == "results":
        products = page.products()
        if not products:
            return "click[back to search]"
        limit = price_limit(instruction)
        for button, price in products:
            if price is not None and price < (limit if limit is not None else float("inf")):
                return f"click[{button}]"
        return f"click[{products[0][0]}]"
    if page.kind == "item":
        chosen = {t for t, _ in page.chosen}
        text = instruction.lower()
        for otype, values in page.option_groups():
            if otype in chosen:
                continue
            for v in values:
                if v in text:
                    return f"click[{v}]"
        return "click[buy now]"
    if page.kind == "sub":
        return "click[< prev]"
    return None


def bracket_action(text: str | None) -> dict[str, Any] | None:
    """A bracket action text as ``{"name", "arguments"}`` (``None`` if it holds none)."""
    if not text:
        return None
    parsed = parse_reply(text, "bracket")
    return {"name": parsed.calls[0].name, "arguments": dict(parsed.calls[0].arguments)} if parsed.calls else None


def requested_options(page: WebShopPage, instruction: str) -> list[str]:
    """Option values on a product page that the instruction asks for (``"<attribute>: <value>"``)."""
    text = instruction.lower()
    return [v for _, values in page.option_groups() for v in values if f": {v}" in text]


def unchosen(page: WebShopPage, options: Sequence[str]) -> list[str]:
    """The values of ``options`` not chosen on this product visit."""
    chosen = {v for _, v in page.chosen}
    return [o for o in options if o not in chosen]
