"""Parsers: one table per format, property tests that no input raises anything but ToolCallError,
the reply-length cap, and linear time on hostile 1 MB inputs (generous absolute bounds; the
1k-vs-100k scaling figures are printed by ``benchmarks/hostile_input.py``)."""

import json
import keyword
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import hero_gym.parsers as parsers_mod
from hero_gym.parsers import PARSERS, check_reply_length, get_parser, parse_reply
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
    # Python keywords are valid tool and argument names
    ("functional", 'as(x=1)', [C(name="as", arguments={"x": 1})], ""),
    ("functional", 'get(from="A", to="B")', [C(name="get", arguments={"from": "A", "to": "B"})], ""),
    ("functional", "if(if='if(x=1)', class_=[1, {'from': 2}], None=null, lambda = 'a\\'from=')",
     [C(name="if", arguments={"if": "if(x=1)", "class_": [1, {"from": 2}], "None": None, "lambda": "a'from="})], ""),
    ("functional", "f(hero_kw_0=1, hero_kw_x0=2, from=3)", [C(name="f", arguments={"hero_kw_0": 1, "hero_kw_x0": 2, "from": 3})], ""),
    ("functional", 'f(x="from=1", y=\'\'\'import=2\'\'\')', [C(name="f", arguments={"x": "from=1", "y": "import=2"})], ""),
    ("bracket", "search[red shoes]", [C(name="search", arguments={"query": "red shoes"})], ""),
    ("bracket", "Thought: buy it.\nAction: click[Buy Now]", [C(name="click", arguments={"target": "Buy Now"})], "Thought: buy it. Action:"),
    ("bracket", "nothing to do", [], "nothing to do"),
    ("bracket", "a[[x] b[] [y] click[ok]", [C(name="b", arguments={"value": ""}), C(name="click", arguments={"target": "ok"})],
     "a[[x] [y]"),
    ("bracket", "éclick[x] _a[y]", [C(name="click", arguments={"target": "x"}), C(name="_a", arguments={"value": "y"})], "é"),
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
    ("functional", "get(from=)", "parse"),
    ("functional", "get(from == 1)", "parse"),
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
@example(name="as", args={"from": 1, "if": "x"})
@example(name="None", args={"True": None, "lambda": "a=1"})
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


@pytest.mark.parametrize("name", keyword.kwlist)
def test_every_python_keyword_is_a_tool_and_argument_name(name):
    assert parse_reply(f"{name}({name}=1, x={name!r})", "functional").calls == [
        ToolCall(name=name, arguments={name: 1, "x": name})]


# ---------------------------------------------------------------- length cap
@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_reply_over_the_cap_is_rejected_before_parsing(parser):
    reply = "<tool_call>" + "a" * 1_000_000   # would be a JSON error if it were parsed
    t = time.perf_counter()
    with pytest.raises(ToolCallError) as exc:
        parse_reply(reply, parser)
    assert time.perf_counter() - t < 0.5
    assert exc.value.kind == "too_long"
    assert "1,000,011 characters" in exc.value.message and "65,536" in exc.value.message


def test_cap_is_configurable_per_call_and_per_process(monkeypatch):
    reply = "search[" + "x" * 100 + "]"
    with pytest.raises(ToolCallError, match="over the limit of 50"):
        parse_reply(reply, "bracket", max_chars=50)
    assert parse_reply(reply, "bracket", max_chars=len(reply)).calls[0].arguments == {"query": "x" * 100}
    assert parse_reply("a" * 100_000, "bracket", max_chars=0).calls == []   # 0: no cap
    monkeypatch.setattr(parsers_mod, "MAX_REPLY_CHARS", 10)
    with pytest.raises(ToolCallError, match="limit of 10"):
        parse_reply(reply, "bracket")
    check_reply_length({"name": "f", "arguments": {"a": "x" * 100}})   # dicts are not text replies


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_bad_cap_is_a_value_error(bad):
    with pytest.raises(ValueError, match="max_chars must be a non-negative int"):
        parse_reply("x", "hermes", max_chars=bad)


def test_the_cap_reaches_the_env_as_an_error_observation():
    import hero_gym

    env = hero_gym.make("hero_gym/WebShop-v0", num_products=50)
    env.reset(seed=0)
    t = time.perf_counter()
    obs, reward, terminated, truncated, info = env.step("click[" * 200_000)
    assert time.perf_counter() - t < 1.0
    assert obs.startswith("Error: The reply is 1,200,000 characters long") and reward == 0.0
    assert info["action_error"]["kind"] == "too_long" and not terminated


# ---------------------------------------------------------------- linear time
# Shapes that made backtracking regexes quadratic (a long run of name characters before a missing
# "[", whitespace inside a code fence, unclosed tags/brackets/strings), 1 MB each, cap disabled.
_MB = 1_000_000
HOSTILE = {
    "letters": "a" * _MB,
    "letters_then_bracket": "a" * _MB + "[",
    "open_brackets": "click[" * (_MB // 6),
    "spaces_in_fence": "```\n" + " " * _MB,
    "letters_in_fence": "```json\n" + "a" * _MB,
    "fences": "``` \n" * (_MB // 5),
    "unclosed_tool_call": "<tool_call>{" + " " * _MB,
    "tool_call_tags": "<tool_call>" * (_MB // 11),
    "unclosed_call": "f(" + "a" * _MB,
    "parens": "f(" + ") " * (_MB // 2),
    "unclosed_string": "f(from='" + "\\'" * (_MB // 2),
    "keyword_args": "f(" + "from=1 " * (_MB // 7),
    "placeholder_clash": "f(from=1, " + "hero_kw_" * (_MB // 16) + "x" * (_MB // 2) + "=2)",
}


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_one_megabyte_hostile_replies_parse_in_linear_time(parser):
    """Each 1 MB shape takes well under a second (it took ~20 s with the old bracket regex); the
    bound is generous (10 s for all shapes) because CI machines are shared."""
    t = time.perf_counter()
    for name, reply in HOSTILE.items():
        try:
            out = parse_reply(reply, parser, max_chars=0)
        except ToolCallError as e:
            assert e.kind == "parse", name
        else:
            assert isinstance(out.text, str), name
    assert time.perf_counter() - t < 10.0
