"""Targets: the env's action syntax (render/parse round trips), and WebShop's visible pages and
instruction-following policy (equal to InstructionExpert in every state, from the record alone)."""
import json
import random

import pytest

import hero_gym
from hero_gym.agents.targets import (
    SYNTAXES,
    action_syntax,
    instruction_action,
    parse_target,
    render_action,
    same_action,
    syntax_hint,
    webshop_instruction,
    webshop_pages,
)
from hero_gym.envs.webshop.expert import InstructionExpert
from hero_gym.parsers import CALL_FORMATS, parse_reply
from hero_gym.records import Episode, Turn

CALL = {"name": "find_user_id_by_email", "arguments": {"email": "mia.li@example.com", "n": 3, "ok": True}}


@pytest.mark.parametrize("syntax", [s for s in SYNTAXES if s != "bracket"])
def test_calls_and_messages_round_trip_through_the_env_parser(syntax):
    text = render_action(CALL, syntax)
    [call] = parse_reply(text, syntax).calls
    assert call.name == CALL["name"] and call.arguments == CALL["arguments"]
    assert parse_target(text, syntax) == (CALL, text)
    assert render_action({"message": " Could you give me your email? "}, syntax) == "Could you give me your email?"
    assert parse_target("Could you give me your email?", syntax) == (
        {"message": "Could you give me your email?"}, "Could you give me your email?")


def test_bracket_syntax_has_search_and_click_only():
    click = {"name": "click", "arguments": {"target": "b0abc12345"}}
    assert render_action(click, "bracket") == "click[b0abc12345]"
    assert render_action({"name": "search", "arguments": {"query": "red shoes"}}, "bracket") == "search[red shoes]"
    assert render_action({"message": "hi"}, "bracket") is None          # WebShop has no messages
    assert render_action({"name": "lookup", "arguments": {"key": "x"}}, "bracket") is None
    assert parse_target("click[b0abc12345]", "bracket") == (click, "click[b0abc12345]")
    assert parse_target(click, "bracket") == (click, "click[b0abc12345]")                 # the old object form
    assert parse_target(json.dumps(click), "bracket") == (click, "click[b0abc12345]")
    assert parse_target("reply to the user: hi", "bracket") == (None, None)
    for empty in (None, "", "null", "None"):
        assert parse_target(empty, "bracket") == (None, None)
    with pytest.raises(ValueError):
        render_action(click, "yaml")


def test_same_action_normalises():
    assert same_action({"name": "click", "arguments": {"target": "Buy Now "}},
                       {"name": "click", "arguments": {"target": "buy now"}})
    assert not same_action({"name": "click", "arguments": {"target": "a"}}, {"name": "click", "arguments": {"target": "b"}})
    assert same_action({"message": "hi  there"}, {"message": "hi there"}) and not same_action(None, None)


def _ep(env_id="x", actions=(), **kw):
    turns = [Turn(index=i, action_text=a, parsed_action=p, observation="o") for i, (a, p) in enumerate(actions)]
    return Episode(env_id=env_id, initial_observation=kw.pop("obs", "hi"), turns=turns, **kw)


def test_action_syntax_of_an_episode():
    call = {"name": "lookup", "arguments": {"key": "fig"}}
    assert action_syntax(_ep("hero_gym/WebShop-v0")) == "bracket"
    assert action_syntax(_ep(obs="WebShop [SEP] Instruction: [SEP] buy x [SEP] Search")) == "bracket"
    assert action_syntax(_ep(actions=[("<tool_call>\n{}\n</tool_call>", call)])) == "hermes"
    assert action_syntax(_ep(actions=[(json.dumps(call), call)])) == "json"
    assert action_syntax(_ep(actions=[('lookup(key="fig")', call)])) == "functional"
    assert action_syntax(_ep(metadata={"system_message": "Be kind.\n" + CALL_FORMATS["json"]})) == "json"
    assert action_syntax(_ep(metadata={"parser": "openai"})) == "openai"
    assert action_syntax(_ep()) == "hermes"
    assert "click[" in syntax_hint("bracket") and "<tool_call>" in syntax_hint("hermes")
    assert all("None" not in syntax_hint(s) for s in SYNTAXES)


# --------------------------------------------------------------------------- WebShop visible pages


class _Recorder:
    """Plays a WebShop env, recording the episode as ``collect`` does and InstructionExpert's action in
    every state the agent reached."""

    def __init__(self, **env_kwargs):
        self.env = hero_gym.make("hero_gym/WebShop-v0", **env_kwargs)
        self.expert = InstructionExpert(self.env)

    def play(self, task_index, policy, rng):
        obs, info = self.env.reset(options={"task_index": task_index})
        ep = Episode(env_id="hero_gym/WebShop-v0", initial_observation=obs)
        expected, done = [], False
        while not done:
            expected.append(self.expert.action())
            action = policy(self.env, info, expected[-1], rng)
            obs, reward, term, trunc, info = self.env.step(action)
            ep.turns.append(Turn(index=len(ep.turns), action_text=action, parsed_action=info.get("parsed_action"),
                                 action_error=info.get("action_error"), observation=obs, reward=reward,
                                 terminated=term, truncated=trunc,
                                 info={k: v for k, v in info.items() if k != "tools"}))
            done = term or trunc
        return ep, expected


def _mixed_policy(env, info, expert_action, rng):
    """Expert, random buttons (sub-pages, options, paging, other products) and invalid clicks, mixed."""
    u = rng.random()
    clickables = info["available_actions"]["clickables"]
    if u < 0.45:
        return expert_action
    if u < 0.85 and clickables:
        return f"click[{rng.choice(clickables)}]"
    if u < 0.93:
        return f"click[{rng.randint(1, 9)}]"             # a button that is not on the page
    return "search[" + " ".join(rng.sample(env.unwrapped.goal.instruction.split(), 3)) + "]"


@pytest.mark.parametrize("env_kwargs", [{}, {"max_results": 5, "instruction_once": True}])
def test_instruction_action_equals_instruction_expert_in_every_reached_state(env_kwargs):
    rec, rng = _Recorder(num_products=300, **env_kwargs), random.Random(0)
    kinds, n = set(), 0
    for i in range(40):
        ep, expected = rec.play(i, _mixed_policy, rng)
        pages = webshop_pages(ep)
        instruction = webshop_instruction(ep)
        assert len(pages) == len(ep.turns)
        for t, page in enumerate(pages):
            assert instruction_action(page, instruction) == expected[t], (t, page.kind, ep.turns[t].action_text)
            kinds.add(page.kind)
            n += 1
    assert kinds == {"search", "results", "item", "sub"} and n > 200


def test_chosen_options_are_tracked_across_sub_pages_and_reset_on_a_new_visit():
    rec = _Recorder(num_products=300)
    for task in range(20):                    # a goal whose product page has an option the instruction names
        rec.env.reset(options={"task_index": task})
        rec.env.step(rec.expert.action())
        product = rec.expert.action()
        rec.env.step(product)
        option = rec.expert.action()
        if option != "click[buy now]":
            break
    assert option != "click[buy now]"
    # search, open the product, choose the option, visit the description, come back, leave, open it again
    script = iter([None, product, option, "click[description]", "click[< prev]", "click[< prev]", product])

    def scripted(env, info, expert_action, rng):
        return next(script, None) or expert_action

    ep, expected = rec.play(task, scripted, random.Random(0))
    pages = webshop_pages(ep)
    assert [p.kind for p in pages][:8] == ["search", "results", "item", "item", "sub", "item", "results", "item"]
    assert pages[3].chosen and pages[5].chosen == pages[3].chosen       # kept through the description page
    assert pages[2].chosen == () and pages[7].chosen == ()               # a new visit starts with none
    assert instruction_action(pages[7], webshop_instruction(ep)) == option == expected[7]
