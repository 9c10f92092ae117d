"""Tool specifications, tool calls and their validation.

A :class:`ToolSpec` is the OpenAI-style description of one tool (name, description, JSON-schema
parameters). A :class:`ToolCall` is what an agent asked for. :func:`validate_call` checks a call
against the tools available now and raises :class:`ToolCallError` with a message a model can act
on ("Unknown tool 'foo'. Available tools: a, b.") instead of letting bad input reach the env.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, Field, TypeAdapter

ErrorKind = Literal["parse", "too_long", "no_action", "unknown_tool", "invalid_arguments", "too_many_calls"]


class ToolCallError(Exception):
    """A malformed action. ``kind`` says what went wrong; ``message`` is written for the model."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}

    def __repr__(self) -> str:
        return f"ToolCallError(kind={self.kind!r}, message={self.message!r})"


class ToolCall(BaseModel):
    """One call of a tool: ``name`` and keyword ``arguments`` (an optional provider ``id``)."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class ToolSpec(BaseModel):
    """An OpenAI-style function tool: name, description and a JSON schema of its parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_openai(self) -> dict[str, Any]:
        """The ``{"type": "function", "function": {...}}`` form used by chat templates and APIs."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @classmethod
    def from_openai(cls, d: dict[str, Any]) -> ToolSpec:
        fn = d.get("function", d)
        return cls(name=fn["name"], description=fn.get("description", ""),
                   parameters=fn.get("parameters") or {"type": "object", "properties": {}})

    @classmethod
    def from_model(cls, name: str, model: type[BaseModel], description: str = "") -> ToolSpec:
        """Build a spec whose parameters are the JSON schema of a pydantic model."""
        schema = model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        return cls(name=name, description=description or (model.__doc__ or "").strip(), parameters=schema)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None) -> ToolSpec:
        """Build a spec from a typed Python function: annotations give types, defaults mark optionals.

        The first paragraph of the docstring is the description; lines ``name: text`` in an
        ``Args:`` section describe the parameters.
        """
        hints = typing.get_type_hints(fn)
        doc = inspect.getdoc(fn) or ""
        description, arg_docs = _split_docstring(doc)
        props: dict[str, Any] = {}
        required: list[str] = []
        for pname, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            ann = hints.get(pname, Any)
            prop = TypeAdapter(ann).json_schema() if ann is not Any else {}
            prop.pop("title", None)
            if pname in arg_docs:
                prop["description"] = arg_docs[pname]
            if param.default is inspect.Parameter.empty:
                required.append(pname)
            props[pname] = prop
        params: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            params["required"] = required
        return cls(name=name or fn.__name__, description=description, parameters=params)


def _split_docstring(doc: str) -> tuple[str, dict[str, str]]:
    description = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    args: dict[str, str] = {}
    if "Args:" in doc:
        for line in doc.split("Args:", 1)[1].splitlines():
            if ":" in line and line.startswith(("    ", "\t", "  ")):
                key, text = line.strip().split(":", 1)
                args[key.split(" ")[0].strip()] = text.strip()
    return description, args


_MAX_SHOWN = 200


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "...'"


def validate_call(call: ToolCall, tools: Sequence[ToolSpec]) -> ToolCall:
    """Check ``call`` against the tools available now; return it or raise :class:`ToolCallError`.

    Checks: the tool exists, required arguments are present, no unknown arguments when the
    schema forbids them or lists properties (tools are Python functions: extra keywords fail),
    and every argument matches its JSON-schema type.
    """
    by_name = {t.name: t for t in tools}
    spec = by_name.get(call.name)
    if spec is None:
        names = ", ".join(sorted(by_name)) or "(none)"
        raise ToolCallError("unknown_tool", f"Unknown tool {_short(call.name)}. Available tools: {names}.")
    schema = spec.parameters or {"type": "object", "properties": {}}
    props = schema.get("properties", {})
    missing = [r for r in schema.get("required", []) if r not in call.arguments]
    if missing:
        raise ToolCallError(
            "invalid_arguments",
            f"Tool '{spec.name}' is missing required argument(s): {', '.join(missing)}. "
            f"Expected arguments: {', '.join(props) or '(none)'}.",
        )
    if schema.get("additionalProperties", False) is False:
        unknown = [k for k in call.arguments if k not in props]
        if unknown:
            raise ToolCallError(
                "invalid_arguments",
                f"Tool '{spec.name}' got unexpected argument(s): {', '.join(_short(k) for k in unknown)}. "
                f"Expected arguments: {', '.join(props) or '(none)'}.",
            )
    validator = jsonschema.Draft202012Validator({**schema, "additionalProperties": True})
    error = next(iter(sorted(validator.iter_errors(call.arguments), key=lambda e: list(e.path))), None)
    if error is not None:
        where = ".".join(str(p) for p in error.path) or "arguments"
        raise ToolCallError(
            "invalid_arguments",
            f"Tool '{spec.name}': argument '{where}' is invalid: {_short(error.instance)} "
            f"does not match the schema ({error.validator} {_short(error.validator_value)}).",
        )
    return call
