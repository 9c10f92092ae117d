"""Pieces shared by both domains: the tool registry type, ``calculate``, ``think``, transfer."""

from __future__ import annotations

import ast
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


def s(desc: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": desc, **extra}


def arr(desc: str, items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "description": desc, "items": items}


# --------------------------------------------------------------------------- calculate
_ALLOWED_CHARS = set("0123456789+-*/(). ")
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
    raise TypeError(f"unsupported expression element: {type(node).__name__}")


def calculate(db: TauDB, expression: str) -> str:
    """v1 semantics: only the characters ``0-9 + - * / ( ) .`` and spaces are allowed; the result
    is ``str(round(float(value), 2))`` and any failure is reported as ``Error: <message>``.
    We evaluate with a small AST walker instead of ``eval``."""
    if not isinstance(expression, str):
        return "Error: expression must be a string"
    if not all(c in _ALLOWED_CHARS for c in expression):
        return "Error: invalid characters in expression"
    if len(expression) > 10_000:
        return "Error: expression too long"
    try:
        tree = ast.parse(expression, mode="eval")
        return str(round(float(_eval_node(tree)), 2))
    except Exception as e:  # noqa: BLE001 - every failure becomes an error observation
        return f"Error: {e}"


def think(db: TauDB, thought: str) -> str:
    return ""


def transfer_to_human_agents(db: TauDB, summary: str) -> str:
    return "Transfer successful"


CALCULATE_SCHEMA = fn_schema(
    "calculate",
    "Evaluate an arithmetic expression and return the result rounded to 2 decimals.",
    {"expression": s("An arithmetic expression using numbers, + - * /, parentheses and spaces, e.g. '3 * (4 + 5)'.")},
)
THINK_SCHEMA = fn_schema(
    "think",
    "Write down a thought. Nothing is looked up and nothing changes; use it to reason step by step.",
    {"thought": s("The thought.")},
)
TRANSFER_SCHEMA = fn_schema(
    TRANSFER_TOOL,
    "Hand the conversation over to a human agent together with a short summary. Use it only when the "
    "user asks for a human or the request is outside what the tools can do.",
    {"summary": s("A short summary of the user's problem.")},
)

COMMON_TOOLS = [
    Tool("calculate", calculate, False, CALCULATE_SCHEMA),
    Tool("think", think, False, THINK_SCHEMA),
    Tool(TRANSFER_TOOL, transfer_to_human_agents, False, TRANSFER_SCHEMA),
]


def run_tool(tools: dict[str, Tool], db: TauDB, name: str, kwargs: dict[str, Any]) -> str:
    """Run one tool like v1's env does: unknown tool -> error text, any exception -> ``Error: ...``.

    Never raises: the agent's input can be anything."""
    tool = tools.get(name)
    if tool is None:
        return f"Unknown action {name}"
    if not isinstance(kwargs, dict):
        return "Error: arguments must be an object"
    try:
        return tool.fn(db, **kwargs)
    except Exception as e:  # noqa: BLE001
        return f"Error: {e}"
