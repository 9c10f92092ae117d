"""The call-format hints next to the parsers: one per parser, and a reply written as a hint says
is read by that parser."""

import pytest

from hero_gym.parsers import CALL_FORMATS, PARSERS, call_format_hint, parse_reply

# a reply written the way each hint asks, calling search(query="red shoes")
FOLLOWING_THE_HINT = {
    "hermes": '<tool_call>\n{"name": "search", "arguments": {"query": "red shoes"}}\n</tool_call>',
    "json": '{"name": "search", "arguments": {"query": "red shoes"}}',
    "openai": '{"tool_calls": [{"function": {"name": "search", "arguments": "{\\"query\\": \\"red shoes\\"}"}}]}',
    "functional": 'search(query="red shoes")',
    "bracket": "search[red shoes]",
}
FOLLOWING_THE_HINT["auto"] = FOLLOWING_THE_HINT["hermes"]


def test_every_parser_has_a_hint():
    assert set(CALL_FORMATS) == set(PARSERS)


@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_a_reply_written_as_the_hint_says_parses(parser):
    hint = call_format_hint(parser)
    assert hint.strip()
    parsed = parse_reply(FOLLOWING_THE_HINT[parser], parser)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("search", {"query": "red shoes"})]


def test_hints_name_their_syntax_and_unknown_parsers_are_errors():
    assert "<tool_call>" in call_format_hint("hermes")
    assert "search[" in call_format_hint("bracket") and "click[" in call_format_hint("bracket")
    with pytest.raises(ValueError, match="Unknown parser"):
        call_format_hint("xml")
