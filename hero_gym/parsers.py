"""Parsers that turn a model's raw reply into tool calls.

Each parser maps a reply to a :class:`ParsedReply` (the calls found and the prose around them).
A reply with no call at all is not an error here (it may be a message to a user); a reply that
*tries* to make a call and gets it wrong raises :class:`~hero_gym.tools.ToolCallError` with
``kind="parse"`` (``kind="too_long"`` for a reply over the length cap, see below). No other
exception ever leaves :func:`parse_reply`, whatever the input.

Formats (select by name):

``hermes``      ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one or several, with
                text around them (Hermes / Qwen chat templates).
``json``        the whole reply is one JSON object ``{"name": ..., "arguments": {...}}``
                (optionally inside a Markdown code fence).
``openai``      an OpenAI assistant message (dict or JSON text) with ``tool_calls`` whose
                ``function.arguments`` is a JSON string (or an object).
``functional``  ``name(arg=value, ...)`` with Python/JSON literal values, keyword arguments only.
``bracket``     WebShop actions ``search[query]`` and ``click[target]``.
``auto``        tries hermes, openai, json, functional, then bracket.

Limits: a text reply longer than :data:`MAX_REPLY_CHARS` (65,536 characters by default; per call
``parse_reply(..., max_chars=n)``, ``0`` for no limit) is rejected before any parsing with a
:class:`~hero_gym.tools.ToolCallError` of kind ``"too_long"``. Every parser runs in time linear in
the length of the reply (no backtracking regular expression is applied to unbounded input), so a
runaway generation costs milliseconds, not seconds.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hero_gym.tools import ToolCall, ToolCallError

MAX_REPLY_CHARS = 65_536
"""Default cap on the length of a text reply (characters); change it here for the whole process, or
pass ``max_chars`` to :func:`parse_reply`. ``0`` disables the cap."""


@dataclass
class ParsedReply:
    """The tool calls found in a reply and the remaining prose (stripped)."""

    calls: list[ToolCall] = field(default_factory=list)
    text: str = ""


Parser = Callable[[Any], ParsedReply]

_FENCE_LANG = frozenset(string.ascii_letters + string.digits + "_-")


def _strip_fence(text: str) -> str:
    """The body of a Markdown code block that is the whole of ``text`` (```` ```lang ... ``` ````,
    body stripped), else ``text`` unchanged. String operations only: linear time."""
    s = text.strip()
    if len(s) < 6 or not s.startswith("```") or not s.endswith("```"):
        return text
    i = 3
    while i < len(s) - 3 and s[i] in _FENCE_LANG:   # the language tag
        i += 1
    return s[i:-3].strip()


def _loads(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        snippet = text if len(text) <= 120 else text[:120] + "..."
        raise ToolCallError("parse", f"Could not parse the {what} as JSON ({e}). Got: {snippet!r}") from None


def _call_from_obj(obj: Any, what: str) -> ToolCall:
    """Build a ToolCall from ``{"name": str, "arguments": dict | json-str}`` (``parameters`` accepted too)."""
    if not isinstance(obj, dict):
        raise ToolCallError("parse", f"The {what} must be a JSON object with 'name' and 'arguments'.")
    if "function" in obj and isinstance(obj["function"], dict):  # OpenAI-style entry
        return _call_from_obj({**obj["function"], "id": obj.get("id")}, what)
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ToolCallError("parse", f"The {what} needs a 'name' string naming the tool.")
    args = obj.get("arguments", obj.get("parameters", {}))
    if args is None:
        args = {}
    if isinstance(args, str):
        args = _loads(args, f"arguments of '{name}'") if args.strip() else {}
    if not isinstance(args, dict):
        raise ToolCallError("parse", f"The arguments of '{name}' must be a JSON object of named values.")
    call_id = obj.get("id")
    return ToolCall(name=name.strip(), arguments=args, id=call_id if isinstance(call_id, str) else None)


_HERMES = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(reply: Any) -> ParsedReply:
    text = _as_text(reply)
    if "<tool_call>" not in text:
        return ParsedReply([], text.strip())
    calls = []
    for m in _HERMES.finditer(text):
        body = _strip_fence(m.group(1).strip())
        calls.append(_call_from_obj(_loads(body, "tool call"), "tool call"))
    prose = _HERMES.sub(" ", text).replace("</tool_call>", " ")
    return ParsedReply(calls, " ".join(prose.split()))


def parse_json(reply: Any) -> ParsedReply:
    if isinstance(reply, dict):
        return ParsedReply([_call_from_obj(reply, "tool call")], "")
    text = _strip_fence(_as_text(reply).strip()).strip()
    if not text.startswith("{"):
        return ParsedReply([], _as_text(reply).strip())
    obj = _loads(text, "tool call")
    if isinstance(obj, dict) and "tool_calls" in obj:
        return parse_openai(obj)
    return ParsedReply([_call_from_obj(obj, "tool call")], "")


def parse_openai(reply: Any) -> ParsedReply:
    if isinstance(reply, str):
        stripped = _strip_fence(reply.strip()).strip()
        if not stripped.startswith("{") or "tool_calls" not in stripped:
            return ParsedReply([], reply.strip())
        reply = _loads(stripped, "assistant message")
    if not isinstance(reply, dict):
        raise ToolCallError("parse", "An OpenAI assistant message must be a JSON object.")
    entries = reply.get("tool_calls") or []
    if not isinstance(entries, list):
        raise ToolCallError("parse", "'tool_calls' must be a list of calls.")
    calls = [_call_from_obj(e, "tool call") for e in entries]
    content = reply.get("content")
    return ParsedReply(calls, content.strip() if isinstance(content, str) else "")


_FUNCTIONAL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\((.*)\)\s*$", re.DOTALL)
_JSON_NAMES = {"true": True, "false": False, "null": None}


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(n) for n in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values) if k is not None}
    return ast.literal_eval(node)


_KEYWORD_ARG = re.compile(r"\b(?:" + "|".join(sorted(keyword.kwlist)) + r")\s*=")


_MAX_NESTING = 200   # CPython's tokenizer refuses deeper bracket nesting
_ARG_TOKEN = re.compile(r"""\s+|[^\W\d]\w*|\d[\w.]*|'''|\"\"\"|["'()\[\]{},]|.""", re.DOTALL)
# The rest of a string literal after its opening quote. Each pattern is unambiguous and always
# matches (an unterminated string runs to the end), so it is one linear scan without backtracking.
_STRING_REST = {
    "'": re.compile(r"(?:[^'\\]|\\.)*(?:'|\\?\Z)", re.DOTALL),
    '"': re.compile(r'(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL),
    "'''": re.compile(r"(?:[^'\\]|\\.|'(?!''))*(?:'''|\\?\Z)", re.DOTALL),
    '"""': re.compile(r'(?:[^"\\]|\\.|"(?!""))*(?:"""|\\?\Z)', re.DOTALL),
}


def _keyword_arg_spans(args: str) -> list[tuple[int, int]]:
    """Spans of argument names in ``args`` (the text between a call's parentheses) that are Python
    keywords (``from=``, ``as=``). One left-to-right pass over tokens: string literals (any quote
    style, with escapes) and nested brackets are skipped, so a keyword inside a value is never
    touched. Linear time: tokens and strings are matched by unambiguous regular expressions."""
    spans: list[tuple[int, int]] = []
    i, n, depth, expect_name = 0, len(args), 0, True
    pending: tuple[int, int] | None = None   # a keyword in name position, waiting for its "="
    while i < n:
        j = _ARG_TOKEN.match(args, i).end()
        text = args[i:j]
        if text.isspace():
            i = j
            continue
        if pending is not None and text == "=" and not args.startswith("==", i):
            spans.append(pending)
        pending = None
        if text in _STRING_REST:
            j = _STRING_REST[text].match(args, j).end()
            expect_name = False
        elif text in ("(", "[", "{"):
            depth, expect_name = depth + 1, False
            if depth > _MAX_NESTING:   # Python's parser rejects this anyway: stop scanning
                return []
        elif text in (")", "]", "}"):
            depth, expect_name = depth - 1, False
        elif text == ",":
            expect_name = depth == 0
        else:
            if expect_name and keyword.iskeyword(text):
                pending = (i, j)
            expect_name = False
        i = j
    return spans


def _rename_keyword_args(args: str) -> tuple[str, dict[str, str]]:
    """``args`` with keyword argument names replaced by placeholders, and placeholder -> name."""
    # placeholders must not occur in the reply: one more "x" than the longest run after any "hero_kw_"
    longest = max((len(m.group(1)) for m in re.finditer(r"hero_kw_(x*)", args)), default=-1)
    prefix = "hero_kw_" + "x" * (longest + 1)
    out, names, last = [], {}, 0
    for k, (a, b) in enumerate(_keyword_arg_spans(args)):
        placeholder = f"{prefix}{k}"
        names[placeholder] = args[a:b]
        out += [args[last:a], placeholder]
        last = b
    out.append(args[last:])
    return "".join(out), names


def _parse_call(args: str) -> tuple[ast.Call | None, dict[str, str]]:
    """Parse ``_(<args>)``; tool names and argument names that are Python keywords are allowed
    (renamed to placeholders first when the text has a ``keyword=``). Returns the call node
    (``None`` if the text is not a single call) and placeholder -> argument name."""
    renamed, names = _rename_keyword_args(args) if _KEYWORD_ARG.search(args) else (args, {})
    tree = ast.parse(f"_({renamed})", mode="eval")
    return (tree.body if isinstance(tree.body, ast.Call) else None), names


def parse_functional(reply: Any) -> ParsedReply:
    """``name(arg=value, ...)``. Any identifier is a valid tool or argument name, Python keywords
    included (``as(x=1)``, ``get(from="A")``); values are Python/JSON literals."""
    text = _strip_fence(_as_text(reply).strip()).strip().rstrip(";")
    m = _FUNCTIONAL.match(text)
    if not m:
        return ParsedReply([], _as_text(reply).strip())
    name = m.group(1)
    try:
        call, renamed = _parse_call(m.group(2))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ToolCallError("parse", f"Could not parse the call {name}(...): {e.__class__.__name__}.") from None
    if call is None:
        raise ToolCallError("parse", f"Expected a single call like {name}(arg=value).")
    if call.args:
        raise ToolCallError("parse", f"Call {name}(...) with keyword arguments only, e.g. {name}(arg=value).")
    args: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ToolCallError("parse", f"Call {name}(...) with explicit keyword arguments (no **).")
        arg = renamed.get(kw.arg, kw.arg)
        try:
            args[arg] = _literal(kw.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            raise ToolCallError(
                "parse", f"Argument '{arg}' of {name}(...) must be a literal (string, number, list, ...)."
            ) from None
    return ParsedReply([ToolCall(name=name, arguments=args)], "")


_BRACKET = re.compile(r"\[([^\[\]]*)\]")
_BRACKET_ARG = {"search": "query", "click": "target"}
_NAME_CHARS = frozenset(string.ascii_letters + "_")


def _name_before(text: str, end: int) -> int:
    """Start of the run of ``[A-Za-z_]`` characters that ends at ``end`` (``end`` if there is none)."""
    start = end
    while start > 0 and text[start - 1] in _NAME_CHARS:
        start -= 1
    return start


def parse_bracket(reply: Any) -> ParsedReply:
    """WebShop actions. Argument names: ``search`` -> ``query``, ``click`` -> ``target``, else ``value``.

    An action is a name of ASCII letters or ``_`` followed by ``[argument]`` (no brackets inside).
    Linear time: each ``[...]`` is found by one forward scan and its name by a backward scan that
    stops at the first non-letter (a name is never scanned twice: a ``]`` ends every match)."""
    text = _as_text(reply)
    calls, prose, last = [], [], 0
    for m in _BRACKET.finditer(text):
        start = _name_before(text, m.start())
        if start == m.start():
            continue
        name = text[start:m.start()].lower()
        calls.append(ToolCall(name=name, arguments={_BRACKET_ARG.get(name, "value"): m.group(1).strip()}))
        prose += [text[last:start], " "]
        last = m.end()
    prose.append(text[last:])
    return ParsedReply(calls, " ".join("".join(prose).split()))


def parse_auto(reply: Any) -> ParsedReply:
    for parser in (parse_hermes, parse_openai, parse_json, parse_functional, parse_bracket):
        parsed = parser(reply)
        if parsed.calls:
            return parsed
    return ParsedReply([], _as_text(reply).strip())


def _as_text(reply: Any) -> str:
    if isinstance(reply, str):
        return reply
    if isinstance(reply, dict):
        return json.dumps(reply)
    raise ToolCallError("parse", f"An action must be text or a tool call, not {type(reply).__name__}.")


PARSERS: dict[str, Parser] = {
    "hermes": parse_hermes,
    "json": parse_json,
    "openai": parse_openai,
    "functional": parse_functional,
    "bracket": parse_bracket,
    "auto": parse_auto,
}


def get_parser(name: str) -> Parser:
    """Look a parser up by name (``hermes``, ``json``, ``openai``, ``functional``, ``bracket``, ``auto``)."""
    try:
        return PARSERS[name]
    except KeyError:
        raise ValueError(f"Unknown parser {name!r}; choose one of {sorted(PARSERS)}") from None


def check_reply_length(reply: Any, max_chars: int | None = None) -> None:
    """Raise :class:`ToolCallError` (kind ``"too_long"``) if ``reply`` is text longer than
    ``max_chars`` (default :data:`MAX_REPLY_CHARS`; ``0`` means no limit). Constant time."""
    limit = MAX_REPLY_CHARS if max_chars is None else max_chars
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValueError(f"max_chars must be a non-negative int (0 = no limit), got {limit!r}")
    if limit and isinstance(reply, str) and len(reply) > limit:
        raise ToolCallError(
            "too_long",
            f"The reply is {len(reply):,} characters long, over the limit of {limit:,}; it was not parsed. "
            "Reply with one short action.",
        )


def parse_reply(reply: str | dict, parser: str = "hermes", *, max_chars: int | None = None) -> ParsedReply:
    """Parse a raw reply; raises only :class:`ToolCallError`: kind ``"too_long"`` for a text reply
    over ``max_chars`` characters (default :data:`MAX_REPLY_CHARS`, ``0`` = no limit; checked before
    any parsing), kind ``"parse"`` on malformed input. ``ValueError`` only for a bad ``parser`` name
    or ``max_chars`` (programming errors, not model output)."""
    fn = get_parser(parser)
    check_reply_length(reply, max_chars)
    try:
        return fn(reply)
    except ToolCallError:
        raise
    except Exception as e:  # a parser bug must still reach the model as a parse error, not a crash
        raise ToolCallError("parse", f"Could not parse the reply ({e.__class__.__name__}).") from None


# ---------------------------------------------------------------------- call-format hints
# What to tell a model so that its replies parse: one instruction per parser, next to the parsers
# that read them (agents and other frameworks put it in the system prompt; no torch needed).
CALL_FORMATS: dict[str, str] = {
    "hermes": (
        "To call a tool, reply with one tool call in exactly this format:\n"
        "<tool_call>\n{\"name\": \"<tool name>\", \"arguments\": {<arguments as a JSON object>}}\n</tool_call>\n"
        "Make at most one tool call per reply. A reply without a tool call is sent to the user as a message."
    ),
    "json": (
        "To call a tool, reply with only a JSON object: {\"name\": \"<tool name>\", \"arguments\": {...}}. "
        "A reply that is not such an object is sent to the user as a message."
    ),
    "openai": (
        "To call a tool, reply with only a JSON object: {\"tool_calls\": [{\"function\": {\"name\": \"<tool "
        "name>\", \"arguments\": \"<arguments as a JSON string>\"}}]}. Make at most one call per reply."
    ),
    "functional": (
        "To call a tool, reply with one call written like a Python function call with keyword arguments, "
        "e.g. tool_name(arg=\"value\", n=3). Make at most one call per reply."
    ),
    "bracket": (
        "Reply with exactly one action: search[<query>] to search, or click[<button or item>] to click a "
        "button or item shown on the page."
    ),
}
CALL_FORMATS["auto"] = CALL_FORMATS["hermes"]   # auto reads hermes first


def call_format_hint(parser: str) -> str:
    """The instruction that makes a model write calls the ``parser`` reads (``ValueError`` for an
    unknown parser name)."""
    get_parser(parser)
    return CALL_FORMATS[parser]
