from typing import Literal

import pytest
from pydantic import BaseModel, Field

from hero_gym.tools import ToolCall, ToolCallError, ToolSpec, validate_call


def get_order(order_id: str, include_items: bool = False, tags: list[str] | None = None) -> str:
    """Fetch an order.

    Args:
        order_id: The order id, e.g. '#W123'.
        include_items: Whether to list the items.
    """
    return order_id


def test_spec_from_function():
    spec = ToolSpec.from_function(get_order)
    assert spec.name == "get_order"
    assert spec.description == "Fetch an order."
    p = spec.parameters
    assert p["required"] == ["order_id"]
    assert p["properties"]["order_id"] == {"type": "string", "description": "The order id, e.g. '#W123'."}
    assert p["properties"]["include_items"]["type"] == "boolean"
    assert spec.to_openai()["function"]["name"] == "get_order"
    assert ToolSpec.from_openai(spec.to_openai()) == spec


class Search(BaseModel):
    """Search the catalog."""

    query: str = Field(description="words to search")
    page: int = 1
    sort: Literal["price", "relevance"] = "relevance"


def test_spec_from_model_validates_calls():
    spec = ToolSpec.from_model("search", Search)
    assert spec.description == "Search the catalog."
    assert spec.parameters["required"] == ["query"]
    validate_call(ToolCall(name="search", arguments={"query": "x", "page": 2}), [spec])
    with pytest.raises(ToolCallError, match="sort"):
        validate_call(ToolCall(name="search", arguments={"query": "x", "sort": "name"}), [spec])


TOOLS = [ToolSpec.from_function(get_order)]


@pytest.mark.parametrize("call,kind,fragment", [
    (ToolCall(name="get_orders"), "unknown_tool", "Available tools: get_order"),
    (ToolCall(name="get_order"), "invalid_arguments", "missing required argument(s): order_id"),
    (ToolCall(name="get_order", arguments={"order_id": 5}), "invalid_arguments", "'order_id' is invalid"),
    (ToolCall(name="get_order", arguments={"order_id": "a", "colour": "x"}), "invalid_arguments", "unexpected argument"),
    (ToolCall(name="get_order", arguments={"order_id": "a", "tags": [1]}), "invalid_arguments", "tags"),
])
def test_validate_call_errors(call, kind, fragment):
    with pytest.raises(ToolCallError) as exc:
        validate_call(call, TOOLS)
    assert exc.value.kind == kind
    assert fragment in exc.value.message
    assert exc.value.to_dict() == {"kind": kind, "message": exc.value.message}


def test_validate_call_ok_and_huge_values_are_shortened():
    assert validate_call(ToolCall(name="get_order", arguments={"order_id": "#W1"}), TOOLS).name == "get_order"
    with pytest.raises(ToolCallError) as exc:
        validate_call(ToolCall(name="x" * 100_000), TOOLS)
    assert len(exc.value.message) < 400
