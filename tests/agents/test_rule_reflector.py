"""The rule reflector's notes: diagnoses that do not echo the student's mistake (the legacy wording,
the control, does), targets in the env's own syntax from visible information only, per env."""
import copy
import json
import random
import re

import pytest
from test_targets import _mixed_policy, _Recorder

from hero_gym.agents.reflector import RuleReflector
from hero_gym.agents.rule_reflector import AIRLINE_ASK_IDENTITY, RETAIL_ASK_IDENTITY
from hero_gym.agents.targets import parse_target
from hero_gym.agents.teachers import hero_note
from hero_gym.parsers import parse_reply
from hero_gym.records import Episode, Turn

BRACKET = re.compile(r"^(search|click)\[[^\[\]]+\]$")


@pytest.fixture(scope="module")
def webshop_episodes():
    rec, rng = _Recorder(num_products=300), random.Random(1)
    return [rec.play(i, _mixed_policy, rng) for i in range(40)]


def _wrong_arguments(turn):
    """The student's own argument strings (the things a note must not quote)."""
    args = (turn.parsed_action or {}).get("arguments") or {}
    return [str(v) for v in args.values() if str(v).strip()]


def _quotes(text, arg):
    return f"'{arg.lower()}'" in text.lower() or (len(arg) >= 4 and arg.lower() in text.lower())


def test_webshop_diagnoses_do_not_echo_the_wrong_argument_and_legacy_does(webshop_episodes):
    invalid = echoed_legacy = errors = 0
    for ep, _ in webshop_episodes:
        for t, refl in RuleReflector().reflect_one(ep).items():
            turn = ep.turns[t]
            if refl.verdict != "error":
                continue
            errors += 1
            for arg in _wrong_arguments(turn):
                assert not _quotes(refl.diagnosis, arg), (turn.action_text, refl.diagnosis)
            assert turn.action_text not in refl.diagnosis
            if turn.action_error and (turn.parsed_action or {}).get("name") == "click":
                invalid += 1
                assert "the clicked button is not on this page" in refl.diagnosis
                echoed_legacy += any(_quotes(refl.echo_diagnosis, a) for a in _wrong_arguments(turn))
                for style in ("no_echo_target", "no_echo", "target_only"):     # the whole note, target included
                    note = hero_note(refl, style=style) or ""
                    assert turn.action_text.lower() not in note.lower()
                assert turn.action_text.lower() in hero_note(refl, style="legacy").lower() or \
                    any(_quotes(hero_note(refl, style="legacy"), a) for a in _wrong_arguments(turn))
    assert errors > 50 and invalid > 10
    assert echoed_legacy == invalid         # the control: the old wording quotes every invalid click


def test_tool_call_diagnoses_do_not_echo_and_legacy_does():
    bad = {"name": "fetch_secret_zq", "arguments": {"order_id": "#W0000zq"}}
    ep = Episode(env_id="hero_gym/TauRetail-v0", initial_observation="Hi, cancel my order.", turns=[
        Turn(index=0, action_text=f"<tool_call>{json.dumps(bad)}</tool_call>", parsed_action=bad,
             action_error={"kind": "unknown_tool", "message": "Unknown action fetch_secret_zq"},
             observation="Unknown action fetch_secret_zq"),
        Turn(index=1, action_text="x", parsed_action={"name": "get_order_details", "arguments": {"oid": "#W0000zq"}},
             action_error={"kind": "invalid_arguments",
                           "message": "GetOrderDetails.invoke() got an unexpected keyword argument 'oid'"},
             observation="Error: GetOrderDetails.invoke() got an unexpected keyword argument 'oid'")])
    out = RuleReflector().reflect_one(ep)
    for t in (0, 1):
        for secret in ("fetch_secret_zq", "#W0000zq", "'oid'", "GetOrderDetails"):
            assert secret not in out[t].diagnosis
    assert "the called tool does not exist" in out[0].diagnosis
    assert "fetch_secret_zq" in out[0].echo_diagnosis and "'oid'" in out[1].echo_diagnosis     # the control


def test_webshop_targets_are_bracket_actions_from_the_visible_page(webshop_episodes):
    with_target = policy_targets = 0
    for ep, expected in webshop_episodes:
        for t, refl in RuleReflector().reflect_one(ep).items():
            if refl.next_action_target is None:
                continue
            with_target += 1
            assert refl.verdict == "error" and refl.target_source == "visible" and refl.target_confidence == "high"
            assert BRACKET.match(refl.target_text), refl.target_text
            assert parse_target(refl.target_text, "bracket")[0] == refl.next_action_target
            note = hero_note(refl)
            assert note.endswith("\nBetter action: " + refl.target_text) and "reply to the user" not in note
            target = refl.next_action_target["arguments"]
            student = (ep.turns[t].parsed_action or {}).get("arguments") or {}
            assert target != student                            # never the action the student took
            if "bought" not in refl.diagnosis:
                # an invalid click, a repeat, a no-op, a product over the limit: the instruction-following
                # policy's action on that page (= InstructionExpert's in the state the student reached)
                assert refl.target_text == expected[t], (refl.diagnosis, refl.target_text, expected[t])
                policy_targets += 1
    assert with_target > 30 and policy_targets > 20


def test_invalid_click_target_is_instruction_expert_action():
    rec = _Recorder(num_products=300)
    script = iter([None, "click[4]"])
    ep, expected = rec.play(0, lambda env, info, a, rng: next(script, None) or a, random.Random(0))
    refl = RuleReflector().reflect_one(ep)[1]
    assert refl.diagnosis.startswith("Execution error (invalid_arguments): the clicked button is not on this page")
    assert "'4'" not in refl.diagnosis and "There is no button '4'" in refl.echo_diagnosis
    assert refl.target_text == expected[1] and expected[1].startswith("click[b0")
    assert RuleReflector(targets=False).reflect_one(ep)[1].next_action_target is None


def test_targets_never_use_the_hidden_goal(webshop_episodes):
    """The same visible record with a different hidden goal (task, gold, reward breakdown) gives the same notes."""
    for ep, _ in webshop_episodes[:10]:
        other = copy.deepcopy(ep)
        other.task_id, other.options = "webshop-other", {"task_index": 999}
        other.metadata["reward_info"] = {"r_att": 0.0}
        for turn in other.turns:
            object.__setattr__(turn, "info", {**turn.info, "task": {"asin": "B0SECRET00", "options": {"c": "red"}},
                                              "instruction": "SECRET", "reward_info": {"x": 1}})
        a, b = RuleReflector().reflect_one(ep), RuleReflector().reflect_one(other)
        assert {t: r.to_dict() for t, r in a.items()} == {t: r.to_dict() for t, r in b.items()}
        assert "SECRET" not in json.dumps({t: r.to_dict() for t, r in b.items()}).upper()


# --------------------------------------------------------------------------- Tau-bench

def _call(name, **args):
    return (f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>",
            {"name": name, "arguments": args})


def _tau(domain, steps, first="Hi! I'd like to cancel my order #W123.", user_id="hidden_user_1"):
    tools = {"retail": ["find_user_id_by_email", "find_user_id_by_name_zip", "cancel_pending_order",
                        "get_order_details"],
             "airline": ["book_reservation", "get_user_details", "cancel_reservation"]}[domain]
    turns = []
    for i, (text, parsed, obs, role) in enumerate(steps):
        turns.append(Turn(index=i, action_text=text, parsed_action=parsed, observation=obs, observation_role=role))
    return Episode(env_id=f"hero_gym/Tau{domain.capitalize()}-v0", task_id=user_id, initial_observation=first,
                   tools=[{"type": "function", "function": {"name": n}} for n in tools], turns=turns,
                   metadata={"task": {"user_id": user_id}})


def test_tau_change_before_identification_targets_identifying_the_user():
    cancel = _call("cancel_pending_order", order_id="#W123", reason="no longer needed")
    ep = _tau("retail", [(*cancel, '{"status": "cancelled"}', "tool")])
    [refl] = RuleReflector().reflect_one(ep).values()
    assert refl.verdict == "error" and "before the user was identified" in refl.diagnosis
    assert "cancel_pending_order" not in refl.diagnosis and "cancel_pending_order" in refl.echo_diagnosis
    assert refl.next_action_target == {"message": RETAIL_ASK_IDENTITY} and refl.target_text == RETAIL_ASK_IDENTITY
    # the email is in the conversation: the lookup itself, as a Hermes call the env's parser reads
    ask = ("Can I have your email?", {"message": "Can I have your email?"}, "Sure, it is mia.li@example.com.", "user")
    ep = _tau("retail", [ask, (*cancel, "{}", "tool")])
    refl = RuleReflector().reflect_one(ep)[1]
    assert refl.target_text.startswith("<tool_call>\n") and refl.target_text.endswith("\n</tool_call>")
    [call] = parse_reply(refl.target_text, "hermes").calls
    assert call.name == "find_user_id_by_email" and call.arguments == {"email": "mia.li@example.com"}
    assert "Better action: <tool_call>" in hero_note(refl)
    # identified first: the change is not flagged; a failed lookup does not count
    found = (*_call("find_user_id_by_email", email="mia.li@example.com"), "mia_li_3668", "tool")
    assert 2 not in RuleReflector().reflect_one(_tau("retail", [ask, found, (*cancel, "{}", "tool")]))
    failed = (found[0], found[1], "Error: user not found", "tool")
    assert RuleReflector().reflect_one(_tau("retail", [ask, failed, (*cancel, "{}", "tool")]))[2].verdict == "error"


def test_tau_airline_identification_and_hidden_user_is_never_used():
    cancel = _call("cancel_reservation", reservation_id="ABC123")
    ep = _tau("airline", [(*cancel, "{}", "tool")], user_id="secret_user_9999")
    refl = RuleReflector().reflect_one(ep)[0]
    assert refl.target_text == AIRLINE_ASK_IDENTITY and "secret_user" not in json.dumps(refl.to_dict())
    said = ("Your user id?", {"message": "Your user id?"}, "It is lucas_khan_0743.", "user")
    refl = RuleReflector().reflect_one(_tau("airline", [said, (*cancel, "{}", "tool")], user_id="other_user_1234"))[1]
    assert refl.next_action_target == {"name": "get_user_details", "arguments": {"user_id": "lucas_khan_0743"}}
    # two different hidden users behind the same conversation: the same target
    again = RuleReflector().reflect_one(_tau("airline", [said, (*cancel, "{}", "tool")], user_id="zed_zed_0001"))[1]
    assert again.to_dict() == refl.to_dict()


def test_tau_gold_expert_successes_get_no_error_and_no_target():
    from hero_gym.envs.tau_bench.env import TauAirlineEnv, TauRetailEnv
    from hero_gym.envs.tau_bench.gold_expert import GoldExpert

    solved = 0
    for env in (TauRetailEnv(data="generated"), TauAirlineEnv(data="generated")):
        for i in range(4):
            obs, info = env.reset(seed=i, options={"task_index": i})
            ep = Episode(env_id="tau", initial_observation=obs, tools=info["tools"])
            expert, done = GoldExpert(env), False
            while not done:
                text = expert.action()
                obs, r, term, trunc, info = env.step(text)
                ep.turns.append(Turn(index=len(ep.turns), action_text=text, parsed_action=info.get("parsed_action"),
                                     action_error=info.get("action_error"), observation=obs, terminated=term,
                                     observation_role=info.get("observation_role", "tool")))
                done = term or trunc
            ep.success = bool(info.get("success"))
            solved += ep.success
            for refl in RuleReflector().reflect_one(ep).values():
                assert refl.verdict != "error" and refl.next_action_target is None, refl.diagnosis
    assert solved >= 6
