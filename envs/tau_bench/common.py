"""Pieces shared by both domains: the tool registry type, how a tool is run, and the shared tools
(``calculate``, ``think``, ``transfer_to_human_agents``, ``get_user_details``).

Argument handling follows v1 (fidelity over friendlier errors): v1 passes the model's arguments to
the tool's ``invoke`` unchecked, so a wrong type, a missing or an unexpected argument is reported as
``Error: <the Python exception text>``, and a value of the wrong type or outside an enum that the
tool's code happens to accept is accepted. :func:`run_tool` reproduces that: arity errors are
worded as Python words them for v1's ``<ToolClass>.invoke`` (e.g. ``GetUserDetails.invoke() missing
1 required positional argument: 'user_id'``), and each tool touches its arguments in the order v1's
code does, so the Python error texts (``'flight_number'``, ``unhashable type: 'list'``, ...) and
which calls fail are v1's. Texts Python itself words differently across versions follow the running
interpreter.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .data import TauDB

TRANSFER_TOOL = "transfer_to_human_agents"
RESPOND = "respond"   # v1's name for a plain message to the user (used in reward's outputs check)


@dataclass(frozen=True)
class Tool:
    """One tool: its implementation ``fn(db, **kwargs) -> str``, whether it may write, its schema."""

    name: str
    fn: Callable[..., str]
    writes: bool
    schema: dict[str, Any]   # OpenAI-style {"type": "function", "function": {...}} (our own text)

    @property
    def v1_class(self) -> str:
        """The name of v1's class for this tool (``get_user_details`` -> ``GetUserDetails``); v1's
        Python errors for bad arguments name it."""
        return "".join(part.capitalize() for part in self.name.split("_"))

    @property
    def parameters(self) -> tuple[str, ...]:
        """The tool's argument names in v1's order (the function's parameters after the database)."""
        return tuple(inspect.signature(self.fn).parameters)[1:]


def dumps(x: Any) -> str:
    """Tool outputs are ``json.dumps`` of the record with default separators (v1 format)."""
    return json.dumps(x)


def fn_schema(name: str, description: str, props: dict[str, Any], required: list[str] | None = None) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props,
                           "required": list(props) if required is None else required},
        },
    }


def string_param(desc: str, **extra: Any) -> dict[str, Any]:
    """The JSON schema of a string argument (``extra``: e.g. ``enum``)."""
    return {"type": "string", "description": desc, **extra}


def array_param(desc: str, items: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of an array argument whose elements follow ``items``."""
    return {"type": "array", "description": desc, "items": items}


# --------------------------------------------------------------------------- calculate
_ALLOWED_CHARS = "0123456789+-*/(). "   # a string, as in v1: `x in` it is a substring test
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}
_UNOPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _eval_node(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and (abs(b) > 1000 or abs(a) > 1e100):
            # v1 would evaluate this with eval() and may hang; we refuse huge powers.
            raise OverflowError("exponent too large")
        return _BINOPS[type(node.op)](a, b)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.Tuple) and not node.elts:
        return ()   # "()" evaluates to an empty tuple, which float() then rejects, as in v1
    raise TypeError(f"unsupported expression element: {type(node).__name__}")


def calculate(db: TauDB, expression: str) -> str:
    """v1 semantics: only the characters ``0-9 + - * / ( ) .`` and spaces are allowed; the result
    is ``str(round(float(value), 2))`` and any failure is reported as ``Error: <message>`` (syntax
    errors name the file ``<string>`` as ``eval`` does). We evaluate with a small AST walker instead
    of ``eval``; the one kept difference: powers with huge operands are refused instead of hanging."""
    if not all(c in _ALLOWED_CHARS for c in expression):   # a non-string fails here as in v1
        return "Error: invalid characters in expression"
    if len(expression) > 10_000:
        return "Error: expression too long"
    try:
        if not isinstance(expression, str):   # e.g. ["1"] passes the character check
            raise TypeError("eval() arg 1 must be a string, bytes or code object")
        tree = ast.parse(expression, filename="<string>", mode="eval")
        return str(round(float(_eval_node(tree)), 2))
    except Exception as e:  # noqa: BLE001 - every failure becomes an error observation
        return f"Error: {e}"


def has(table: Any, key: Any) -> bool:
    """``key in table`` with dict semantics: an unhashable key raises ``TypeError`` ("unhashable
    type: 'list'") as v1's ``key in data[...]`` does; a hashable non-string key is simply absent."""
    hash(key)
    return key in table


def get_user_details(db: TauDB, user_id: str) -> str:
    """The user's record as JSON (both domains), or ``Error: user not found``."""
    if has(db.users, user_id):
        return dumps(db.users[user_id])
    return "Error: user not found"


def think(db: TauDB, thought: str) -> str:
    return ""


def transfer_to_human_agents(db: TauDB, summary: str) -> str:
    return "Transfer successful"


CALCULATE_SCHEMA = fn_schema(
    "calculate",
    "Evaluate an arithmetic expression and return the result rounded to 2 decimals.",
    {"expression": string_param("An arithmetic expression using numbers, + - * /, parentheses and spaces, e.g. '3 * (4 + 5)'.")},
)
THINK_SCHEMA = fn_schema(
    "think",
    "Write down a thought. Nothing is looked up and nothing changes; use it to reason step by step.",
    {"thought": string_param("The thought.")},
)
TRANSFER_SCHEMA = fn_schema(
    TRANSFER_TOOL,
    "Hand the conversation over to a human agent together with a short summary. Use it only when the "
    "user asks for a human or the request is outside what the tools can do.",
    {"summary": string_param("A short summary of the user's problem.")},
)

COMMON_TOOLS = [
    Tool("calculate", calculate, False, CALCULATE_SCHEMA),
    Tool("think", think, False, THINK_SCHEMA),
    Tool(TRANSFER_TOOL, transfer_to_human_agents, False, TRANSFER_SCHEMA),
]


def _quoted_list(names: list[str]) -> str:
    """Python's wording of missing arguments: 'a' / 'a' and 'b' / 'a', 'b', and 'c'."""
    q = [f"'{n}'" for n in names]
    if len(q) == 1:
        return q[0]
    if len(q) == 2:
        return f"{q[0]} and {q[1]}"
    return ", ".join(q[:-1]) + f", and {q[-1]}"


def arity_error(tool: Tool, kwargs: dict[str, Any], domain: str = "") -> str | None:
    """The ``TypeError`` text Python raises when v1 calls ``<ToolClass>.invoke(data=..., **kwargs)``
    with these keyword arguments, or ``None`` when the call binds. Python checks the keywords in
    order (the first unknown one is reported), then the missing ones."""
    if "data" in kwargs:   # a second value for v1's own ``data`` keyword fails at the call site
        module = f"tau_bench.envs.{domain}.tools.{tool.name}." if domain else ""
        return f"{module}{tool.v1_class}.invoke() got multiple values for keyword argument 'data'"
    params = tool.parameters
    for key in kwargs:
        if key not in params:
            return f"{tool.v1_class}.invoke() got an unexpected keyword argument '{key}'"
    missing = [p for p in params if p not in kwargs]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        return (f"{tool.v1_class}.invoke() missing {len(missing)} required positional argument{plural}: "
                f"{_quoted_list(missing)}")
    return None


def call_error(tools: dict[str, Tool], name: str, kwargs: Any) -> dict[str, str] | None:
    """How a call is malformed before any tool code runs (unknown tool, arguments that do not bind),
    as ``{"kind", "message"}`` for ``info["action_error"]``, or ``None``. The observation stays v1's
    text; this only flags the step as an action error the same way schema validation would."""
    tool = tools.get(name)
    if tool is None:
        return {"kind": "unknown_tool", "message": f"Unknown action {name}"}
    if not isinstance(kwargs, dict):
        return {"kind": "invalid_arguments", "message": "arguments must be an object"}
    err = arity_error(tool, kwargs)
    return None if err is None else {"kind": "invalid_arguments", "message": err}


def is_error_observation(obs: str) -> bool:
    """Whether a :func:`run_tool` observation reports a failed call (``Error: ...`` or ``Unknown action ...``)."""
    return obs.startswith(("Error", "Unknown action"))


def run_tool(tools: dict[str, Tool], db: TauDB, name: str, kwargs: dict[str, Any], domain: str = "") -> str:
    """Run one tool like v1's env does: unknown tool -> ``Unknown action <name>``, arguments that do
    not bind or any exception -> ``Error: <Python's message>``; a tool that returns nothing (v1's
    ``send_certificate`` past its third certificate) gives ``"None"``, the text of v1's ``None``.

    Never raises: the agent's input can be anything. ``domain`` only completes one rare message
    (a ``data`` argument), which v1 words with the tool's module path."""
    tool = tools.get(name)
    if tool is None:
        return f"Unknown action {name}"
    if not isinstance(kwargs, dict):
        return "Error: arguments must be an object"
    err = arity_error(tool, kwargs, domain)
    if err is not None:
        return f"Error: {err}"
    try:
        out = tool.fn(db, **kwargs)
    except Exception as e:  # noqa: BLE001
        return f"Error: {e}"
    return str(out)
