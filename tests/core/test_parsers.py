"""Parsers: one table per format, plus property tests that no input raises anything but ToolCallError."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hero_gym.parsers import PARSERS, get_parser, parse_reply
from hero_gym.tools import ToolCall, ToolCallError

C = ToolCall

OK_CASES = [
    ("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', [C(name="f", arguments={"a": 1})], ""),
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call> done',
     [C(name="f")], "Let me check. done"),
    ("hermes", '<tool_call>{"name": "a", "arguments": {"x": "1"}}</tool_call><tool_call>{"name": "b", "arguments": "{\\"y\\": 2}"}</tool_call>',
     [C(name="a", arguments={"x": "1"}), C(name="b", arguments={"y": 2})], ""),
    ("hermes", '<tool_call>{"name": "f", "arguments": {"q": "x"}}', [C(name="f", arguments={"q": "x"})], ""),  # unclosed at EOS
    ("hermes", 'just words', [], "just words"),
    ("json", '{"name": "f", "arguments": {"a": [1, 2]}}', [C(name="f", arguments={"a": [1, 2]})], ""),
    ("json", '```json\n{"name": "f", "parameters": {"a": null}}\n```', [C(name="f", arguments={"a": None})], ""),
    ("json", 'hello there', [], "hello there"),
    ("openai", {"content": "hi", "tool_calls": [{"id": "c1", "type": "function",
                                                  "function": {"name": "f", "arguments": '{"a": "b"}'}}]},
     [C(name="f", arguments={"a": "b"}, id="c1")], "hi"),
    ("openai", json.dumps({"tool_calls": [{"function": {"name": "g", "arguments": {"k": 2}}}]}),
     [C(name="g", arguments={"k": 2})], ""),
    ("openai", "plain text", [], "plain text"),
    ("functional", 'find_user(first_name="Ann", zip="12345")', [C(name="find_user", arguments={"first_name": "Ann", "zip": "12345"})], ""),
    ("functional", "f(items=['a', 'b'], n=3, ok=true, x=None)", [C(name="f", arguments={"items": ["a", "b"], "n": 3, "ok": True, "x": None})], ""),
    ("functional", "no call here", [], "no call here"),
    ("functional", "Sure (I think)", [], "Sure (I think)"),
    ("bracket", "search[red shoes]", [C(name="search", arguments={"query": "red shoes"})], ""),
    ("bracket", "Thought: buy it.\nAction: click[Buy Now]", [C(name="click", arguments={"target": "Buy Now"})], "Thought: buy it. Action:"),
    ("bracket", "nothing to do", [], "nothing to do"),
    ("auto", 'f(a=1)', [C(name="f", arguments={"a": 1})], ""),
    ("auto", 'click[b01]', [C(name="click", arguments={"target": "b01"})], ""),
    ("auto", '{"name": "f", "arguments": {}}', [C(name="f")], ""),
    ("auto", 'Hello, how can I help?', [], "Hello, how can I help?"),
]


@pytest.mark.parametrize("parser,reply,calls,text", OK_CASES)
def test_parse_ok(parser, reply, calls, text):
    out = parse_reply(reply, parser)
    assert out.calls == calls
    assert out.text == text


BAD_CASES = [
    ("hermes", "<tool_call>{not json}</tool_call>", "JSON"),
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>', "name"),
    ("hermes", '<tool_call>{"name": "f", "arguments": [1]}</tool_call>', "object"),
    ("hermes", '<tool_call>{"name": "f", "arguments": "{bad"}</tool_call>', "arguments of 'f'"),
    ("hermes", "<tool_call>[1, 2]</tool_call>", "JSON object"),
    ("json", '{"name": "f", "arguments": ', "JSON"),
    ("openai", '{"tool_calls": 5}', "list"),
    ("functional", "f(1, 2)", "keyword"),
    ("functional", "f(a=open('x'))", "literal"),
    ("functional", "f(a=)", "parse"),
]


@pytest.mark.parametrize("parser,reply,fragment", BAD_CASES)
def test_parse_errors_are_typed_and_actionable(parser, reply, fragment):
    with pytest.raises(ToolCallError) as exc:
        parse_reply(reply, parser)
    assert exc.value.kind == "parse"
    assert fragment.lower() in exc.value.message.lower()


def test_unknown_parser_name():
    with pytest.raises(ValueError, match="Unknown parser"):
        get_parser("xml")


def test_non_text_action_is_a_parse_error():
    with pytest.raises(ToolCallError):
        parse_reply(12345, "hermes")  # type: ignore[arg-type]


_fragments = st.sampled_from(["<tool_call>", "</tool_call>", "{", "}", "[", "]", "(", ")", '"name"', '"arguments"',
                              ":", ",", "search", "click", "f", "=", "'", '"', "\\", "```", "tool_calls", "null"])
_texty = st.lists(st.one_of(st.text(max_size=12), _fragments), max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(reply=st.one_of(st.text(), _texty), parser=st.sampled_from(sorted(PARSERS)))
def test_arbitrary_text_never_raises_anything_but_toolcallerror(reply, parser):
    try:
        out = parse_reply(reply, parser)
    except ToolCallError as e:
        assert e.kind == "parse" and e.message
    else:
        assert all(isinstance(c, ToolCall) for c in out.calls)
        assert isinstance(out.text, str)


@settings(max_examples=100, deadline=None)
@given(name=st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True),
       args=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True),
                            st.one_of(st.integers(), st.text(max_size=20), st.booleans(), st.none()), max_size=4))
def test_hermes_and_functional_round_trip(name, args):
    hermes = f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"
    assert parse_reply(hermes, "hermes").calls == [ToolCall(name=name, arguments=args)]
    functional = f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"
    assert parse_reply(functional, "functional").calls == [ToolCall(name=name, arguments=args)]


def test_deeply_nested_input_is_a_parse_error_not_a_crash():
    deep = "<tool_call>" + "[" * 100_000 + "</tool_call>"
    with pytest.raises(ToolCallError):
        parse_reply(deep, "hermes")
    with pytest.raises(ToolCallError):
        parse_reply("f(a=" + "[" * 100_000 + "])", "functional")
