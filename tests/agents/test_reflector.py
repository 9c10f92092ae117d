"""Reflector parsing (valid, fenced, truncated, missing turns, garbage), retries and the rule reflector."""
import json

import pytest

from hero_gym.agents.reflector import (
    REFLECTION_RULES,
    FunctionReflector,
    LLMReflector,
    Reflector,
    RuleReflector,
    TurnReflection,
    build_reflection_messages,
    parse_reflection,
)
from hero_gym.records import Episode, Turn


def _ep(actions, *, success=False, task_id="t0"):
    turns = []
    for i, (text, parsed, err, obs) in enumerate(actions):
        last = i == len(actions) - 1
        turns.append(Turn(index=i, action_text=text, parsed_action=parsed, action_error=err, observation=obs,
                          terminated=last and success, reward=1.0 if (last and success) else 0.0))
    return Episode(env_id="hero_gym/Lookup-v0", task_id=task_id, initial_observation="What is the code for fig?",
                   system_prompt="Be helpful.", turns=turns, success=success, total_reward=float(success))


GOOD = {
    "turn1": {"diagnosis": "Looked up the right item.", "confidence": "high", "next_action_target": None},
    "turn2": {"diagnosis": "Answered with a wrong code.", "confidence": "high",
              "next_action_target": {"name": "answer", "arguments": {"code": "123"}}},
    "turn3": {"diagnosis": "Repeated question.", "confidence": "medium", "next_action_target": None},
}


def test_valid_json():
    out = parse_reflection(json.dumps(GOOD), 3)
    assert sorted(out) == [0, 1, 2]
    assert out[1].next_action_target == {"name": "answer", "arguments": {"code": "123"}}
    assert out[1].confidence == "high" and out[2].confidence == "medium"


def test_fenced_json_with_prose():
    text = "Sure! Here is my review:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nHope this helps {not json}"
    assert sorted(parse_reflection(text, 3)) == [0, 1, 2]


def test_trailing_text_without_fence():
    assert sorted(parse_reflection(json.dumps(GOOD) + "\n\nThat is all. {", 3)) == [0, 1, 2]


def test_truncated_json_keeps_complete_turns():
    s = json.dumps(GOOD)
    cut = s[: s.index('"turn3"') + 30]          # turn3 cut mid-string
    out = parse_reflection(cut, 3)
    assert sorted(out) == [0, 1]
    cut2 = s[: s.index('"code"')]               # inside turn2's nested target
    assert sorted(parse_reflection(cut2, 3)) == [0]


def test_missing_and_bad_turns_are_masked():
    d = {"turn1": GOOD["turn1"], "Turn 3": {"diagnosis": "ok", "confidence": "HIGH"},
         "turn2": {"diagnosis": "", "confidence": "high"}, "turn9": GOOD["turn1"], "summary": "x",
         "turn_4": {"confidence": "low"}}
    out = parse_reflection(json.dumps(d), 4)
    assert sorted(out) == [0, 2]
    assert out[2].confidence == "high"


def test_odd_confidence_and_string_target():
    d = {"turn1": {"diagnosis": "d", "confidence": "very sure", "next_action_target": '{"name": "lookup"}'}}
    out = parse_reflection(json.dumps(d), 1)
    assert out[0].confidence == "low" and out[0].next_action_target == {"name": "lookup"}


def test_list_form_and_wrapped_form():
    lst = [{"turn": 1, "diagnosis": "a", "confidence": "low"}, {"turn": "2", "diagnosis": "b"}]
    assert sorted(parse_reflection(json.dumps(lst), 2)) == [0, 1]
    assert sorted(parse_reflection(json.dumps({"reflection": GOOD}), 3)) == [0, 1, 2]


@pytest.mark.parametrize("garbage", ["", "no json here", "{{{{", "[1, 2, 3]", '{"turn1": 5}', "null"])
def test_garbage_masks_everything(garbage):
    assert parse_reflection(garbage, 3) == {}


def test_prompt_carries_rules_and_trajectory():
    ep = _ep([("<tool_call>x</tool_call>", {"name": "lookup", "arguments": {"key": "fig"}}, None, "412"),
              ("answer", {"name": "answer", "arguments": {"code": "1"}}, None, "Wrong code.")])
    msgs = build_reflection_messages(ep)
    assert msgs[0]["content"] == REFLECTION_RULES
    for needle in ("every", "decision error", "execution error", "null", "word for word", "repeat", "JSON"):
        assert needle.lower() in REFLECTION_RULES.lower()
    user = msgs[1]["content"]
    assert "## Turn 1" in user and "## Turn 2" in user and "412" in user and '"turn2"' in user
    assert "did not succeed" in user


def test_llm_reflector_retries_bounded_and_keeps_best():
    ep = _ep([("a", None, None, "o1"), ("b", None, None, "o2")])
    calls = []
    replies = iter(["garbage", json.dumps({"turn1": GOOD["turn1"]}), "more garbage"])

    def gen(chats):
        calls.append(len(chats))
        return [next(replies) for _ in chats]

    r = LLMReflector(gen, max_retries=2, min_coverage=1.0)
    [res] = r.reflect([ep])
    assert calls == [1, 1, 1]                    # 1 try + 2 retries, then stop
    assert sorted(res.turns) == [0] and res.attempts == 3
    assert isinstance(r, Reflector)


def test_llm_reflector_no_retry_when_complete_and_policy_adapter():
    ep = _ep([("a", None, None, "o1")])

    class FakePolicy:
        n = 0

        def generate_text(self, chats, max_new_tokens, temperature):
            FakePolicy.n += 1
            return ["```json\n" + json.dumps({"turn1": GOOD["turn2"]}) + "\n```"] * len(chats)

    [res] = LLMReflector(FakePolicy()).reflect([ep])
    assert FakePolicy.n == 1 and res.get(0).next_action_target["arguments"]["code"] == "123"


def test_rule_reflector_signals():
    lookup = {"name": "lookup", "arguments": {"key": "fig"}}
    ep = _ep([
        ("bad", None, {"kind": "parse", "message": "Malformed tool call."}, "Error: Malformed tool call."),
        ("l", lookup, None, "412"),
        ("l", lookup, None, "412"),
        ("hi", {"message": "hi"}, None, "Please use the tools"),
        ("a", {"name": "answer", "arguments": {"code": "412"}}, None, "Correct."),
    ], success=True)
    out = RuleReflector().reflect([ep])[0].turns
    assert "Execution error (parse)" in out[0].diagnosis and out[0].confidence == "high"
    assert "Reasonable" in out[1].diagnosis
    assert "Redundant" in out[2].diagnosis and "turn 2" in out[2].diagnosis
    assert out[4].diagnosis.startswith("Correct") and out[4].confidence == "high"
    failed = _ep([("a", {"name": "answer", "arguments": {"code": "1"}}, None, "Wrong code.")])
    failed.turns[0].terminated = True
    o = RuleReflector(target_fn=lambda e, t: {"name": "lookup", "arguments": {"key": "fig"}}).reflect([failed])[0]
    assert "Decision error" in o.turns[0].diagnosis and o.turns[0].confidence == "high"
    assert o.turns[0].next_action_target["name"] == "lookup"
    quiet = _ep([("a", {"name": "lookup", "arguments": {"key": "x"}}, None, "o"), ("b", None, None, "o2")])
    assert RuleReflector(diagnose_uninformative=False).reflect([quiet])[0].turns == {}


def test_function_reflector():
    ep = _ep([("a", None, None, "o")])
    [res] = FunctionReflector(lambda e: {0: TurnReflection("x", "high", {"name": "y"})}).reflect([ep])
    assert res.to_json() == {"turn1": {"diagnosis": "x", "confidence": "high", "next_action_target": {"name": "y"}}}


def test_llm_reflector_with_a_real_policy_masks_garbage():
    from hero_gym.agents.models import load_default_tokenizer, tiny_model
    from hero_gym.agents.policy import HFPolicy

    tok = load_default_tokenizer()
    policy = HFPolicy(tiny_model(tok), tok, lora=None)
    ep = _ep([("a", None, None, "o1"), ("b", None, None, "o2")])
    [res] = LLMReflector(policy, max_new_tokens=6, max_retries=1).reflect([ep])
    assert res.attempts == 2 and res.turns == {} and isinstance(res.raw, str)   # random model: all masked
