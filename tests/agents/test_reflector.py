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
from hero_gym.records import Episode, Turn  # noqa: F401


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
    ep.turns[-1].terminated = True
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
    out = RuleReflector(diagnose_uninformative=True).reflect([ep])[0].turns
    assert "Execution error (parse)" in out[0].diagnosis and out[0].confidence == "high"
    assert "Reasonable" in out[1].diagnosis
    assert "no effect" in out[2].diagnosis and out[2].verdict == "error"    # same result again
    assert out[4].diagnosis.startswith("Correct") and out[4].confidence == "high"
    assert 1 not in RuleReflector().reflect([ep])[0].turns     # default: uninformative turns are masked
    again = _ep([("l", lookup, None, "412"), ("l", lookup, None, "412")])
    again.initial_observation = "412"                             # both acted on the same observation
    assert "Redundant" in RuleReflector().reflect([again])[0].turns[1].diagnosis
    failed = _ep([("a", {"name": "answer", "arguments": {"code": "1"}}, None, "Wrong code.")])
    failed.turns[0].terminated = True
    o = RuleReflector(target_fn=lambda e, t: {"name": "lookup", "arguments": {"key": "fig"}}).reflect([failed])[0]
    assert "Decision error" in o.turns[0].diagnosis and o.turns[0].confidence == "high"
    assert o.turns[0].next_action_target["name"] == "lookup"
    quiet = _ep([("a", {"name": "lookup", "arguments": {"key": "x"}}, None, "o"), ("b", None, None, "o2")])
    assert RuleReflector().reflect([quiet])[0].turns == {}


def test_turn_capped_episode_is_not_called_failed():
    """an episode cut by the turn cap is unfinished, not failed."""
    ep = _ep([("l", {"name": "lookup", "arguments": {"key": "fig"}}, None, "412")])
    ep.turns[0].truncated = True
    assert RuleReflector().reflect([ep])[0].turns == {}
    user = build_reflection_messages(ep)[1]["content"]
    assert "did not succeed" not in user and "not a verdict" in user


def test_function_reflector():
    ep = _ep([("a", None, None, "o")])
    [res] = FunctionReflector(lambda e: {0: TurnReflection("x", "high", {"name": "y"})}).reflect([ep])
    assert res.to_json() == {"turn1": {"diagnosis": "x", "confidence": "high", "next_action_target": {"name": "y"},
                                       "target_text": '<tool_call>\n{"name": "y", "arguments": {}}\n</tool_call>'}}


# --------------------------------------------------------------------------- scripted experts

class Recorder:
    """Wraps an env and records the episode an agent plays through it, as :func:`collect` would."""

    def __init__(self, env, env_id):
        self.env, self.env_id, self.unwrapped = env, env_id, env.unwrapped

    def reset(self, **kw):
        obs, info = self.env.reset(**kw)
        self.episode = Episode(env_id=self.env_id, task_id=info.get("task_id"), initial_observation=str(obs))
        return obs, info

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        ep = self.episode
        ep.turns.append(Turn(index=len(ep.turns), action_text=str(action), parsed_action=info.get("parsed_action"),
                             action_error=info.get("action_error"), observation=str(obs),
                             observation_role=info.get("observation_role", "tool"), reward=float(reward),
                             terminated=term, truncated=trunc,
                             info={k: v for k, v in info.items() if k != "tools"}))
        ep.total_reward += float(reward)
        if term or trunc:
            ep.success = bool(info.get("success", term and reward > 0))
        return obs, reward, term, trunc, info


def _play(rec, agent_fn, **reset_kw):
    obs, info = rec.reset(**reset_kw)
    done = False
    while not done:
        obs, _, term, trunc, info = rec.step(agent_fn(obs, info))
        done = term or trunc
    return rec.episode


def _webshop_expert_episodes(n):
    import hero_gym
    from hero_gym.envs.webshop.expert import ExpertAgent

    rec = Recorder(hero_gym.make("hero_gym/WebShop-v0"), "hero_gym/WebShop-v0")
    eps = []
    for i in range(n):
        agent = ExpertAgent()
        obs, info = rec.reset(options={"task_index": i})
        agent.reset(info)
        done = False
        while not done:
            obs, _, term, trunc, info = rec.step(agent.act(obs, info))
            done = term or trunc
        eps.append(rec.episode)
    return eps


def _lookup_solver_episodes(n):
    import hero_gym

    rec = Recorder(hero_gym.make("hero_gym/Lookup-v0"), "hero_gym/Lookup-v0")
    eps = []
    for i in range(n):
        def solver(obs, info):
            if obs.startswith("What is the code"):
                return '<tool_call>{"name": "lookup", "arguments": {"key": "%s"}}</tool_call>' % obs.split()[-1][:-1]
            return '<tool_call>{"name": "answer", "arguments": {"code": "%s"}}</tool_call>' % obs.strip()
        eps.append(_play(rec, solver, options={"task_index": i}))
    return eps


def _tau_gold_episodes(n):
    from hero_gym.envs.tau_bench.env import TauRetailEnv
    from hero_gym.envs.tau_bench.gold_expert import play_gold

    rec = Recorder(TauRetailEnv(data="generated", split="test"), "hero_gym/TauRetail-v0")
    eps = []
    for i in range(n):
        play_gold(rec, seed=i, options={"task_index": i})
        eps.append(rec.episode)
    return eps


@pytest.mark.parametrize("source", [_webshop_expert_episodes, _lookup_solver_episodes, _tau_gold_episodes])
def test_scripted_expert_successes_have_no_error_turn(source):
    eps = [ep for ep in source(8) if ep.success]
    assert len(eps) >= 5
    for ep in eps:
        for t, refl in RuleReflector().reflect_one(ep).items():
            assert refl.verdict != "error", (ep.turns[t].action_text, refl.diagnosis)


def test_webshop_paging_and_option_clicks_are_not_errors_but_a_missing_option_is():
    eps = _webshop_expert_episodes(8)
    paged = [ep for ep in eps if sum(t.action_text == "click[next >]" for t in ep.turns) >= 1]
    opts = [ep for ep in eps if any(t.info.get("page") == "item" and eps and t.action_text not in
                                    ("click[buy now]",) for t in ep.turns[1:])]
    assert paged and opts
    ep = opts[0].model_copy(deep=True)       # drop the option clicks: buying without them is an error
    buy = ep.turns[-1]
    opened = next(k for k, t in enumerate(ep.turns) if t.info.get("page") == "item")
    ep.turns = ep.turns[:opened + 1] + [buy]
    ep.success = False
    refl = RuleReflector().reflect_one(ep)
    last = refl[len(ep.turns) - 1]
    assert last.verdict == "error" and "before selecting" in last.diagnosis and "without selecting" in last.echo_diagnosis
    missing = last.diagnosis.split("'")[1]      # the first requested option, clicked as the target
    assert last.target_text == f"click[{missing}]" and last.target_source == "visible"


class _Spy(dict):
    """An info dict that records every key read."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read = set()

    def __getitem__(self, k):
        self.read.add(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        self.read.add(k)
        return super().get(k, default)

    def __contains__(self, k):
        self.read.add(k)
        return super().__contains__(k)


FORBIDDEN = {"task", "expected", "gold", "gold_actions", "actions", "reward_info", "instruction", "asin", "goal"}


@pytest.mark.parametrize("source", [_webshop_expert_episodes, _lookup_solver_episodes, _tau_gold_episodes])
def test_rule_reflector_never_reads_task_internals(source):
    eps = source(3)
    spies = []
    for ep in eps:
        for turn in ep.turns:
            info = _Spy({**turn.info, "task": {"secret": 1}, "expected": "SECRET", "gold": ["SECRET"]})
            object.__setattr__(turn, "info", info)
            spies.append(info)
        ep.metadata["task"] = {"secret": 1}
    out = RuleReflector().reflect(eps)
    assert spies and not set().union(*(s.read for s in spies)) & FORBIDDEN
    assert "SECRET" not in json.dumps([r.to_json() for r in out])


def test_llm_reflector_with_a_real_policy_masks_garbage():
    from hero_gym.agents.models import load_default_tokenizer, tiny_model
    from hero_gym.agents.policy import HFPolicy

    tok = load_default_tokenizer()
    policy = HFPolicy(tiny_model(tok), tok, lora=None)
    ep = _ep([("a", None, None, "o1"), ("b", None, None, "o2")])
    [res] = LLMReflector(policy, max_new_tokens=6, max_retries=1).reflect([ep])
    assert res.attempts == 2 and res.turns == {} and isinstance(res.raw, str)   # random model: all masked


# --------------------------------------------------------------------------- the model reflector: syntax, no echo, budget, retries

def _webshop_ep(n):
    obs = "WebShop [SEP] Instruction: [SEP] i need red shoes, and price lower than 30.00 dollars [SEP] Search"
    turns = [Turn(index=i, action_text="click[4]", parsed_action={"name": "click", "arguments": {"target": "4"}},
                  action_error={"kind": "invalid_arguments", "message": "There is no button '4' on this page."},
                  observation="Error: There is no button '4' on this page.") for i in range(n)]
    return Episode(env_id="hero_gym/WebShop-v0", initial_observation=obs, turns=turns)


def test_reflection_budget_scales_with_the_turns():
    from hero_gym.agents.reflector import reflection_budget

    assert reflection_budget(1) == 112 and reflection_budget(5) == 432 and reflection_budget(30) == 2432
    assert reflection_budget(5, max_new_tokens=300) == 300 and reflection_budget(0) == reflection_budget(1)
    seen = []

    def gen(chats, max_new_tokens):
        seen.append(list(max_new_tokens))
        return ["{}"] * len(chats)

    LLMReflector(gen, max_retries=0).reflect([_webshop_ep(1), _webshop_ep(5)])
    LLMReflector(gen, max_retries=0, tokens_per_turn=10, base_tokens=0, max_new_tokens=30).reflect(
        [_webshop_ep(1), _webshop_ep(5)])
    assert seen == [[112, 432], [10, 30]]
    with pytest.raises(ValueError):
        LLMReflector(gen, tokens_per_turn=0)


def test_retries_ask_only_for_the_missing_turns_and_keep_the_rest():
    ep = _ep([("a", None, None, "o1"), ("b", None, None, "o2"), ("c", None, None, "o3")])
    calls = []
    replies = iter([
        json.dumps({"turn1": {"diagnosis": "first try", "confidence": "high"}}),
        json.dumps({"turn1": {"diagnosis": "OVERWRITE", "confidence": "high"},
                    "turn2": {"diagnosis": "second try", "confidence": "medium"}}),
        json.dumps({"turn3": {"diagnosis": "third try", "confidence": "low"}}),
    ])

    def gen(chats, max_new_tokens):
        calls.append((chats[0][1]["content"].rsplit("\n", 1)[-1], list(max_new_tokens)))
        return [next(replies)]

    [res] = LLMReflector(gen, max_retries=2, min_coverage=1.0).reflect([ep])
    assert [c[1] for c in calls] == [[32 + 3 * 80], [32 + 2 * 80], [32 + 80]]
    assert '"turn1", "turn2", "turn3"' in calls[0][0] and "only these keys" not in calls[0][0]
    assert calls[1][0].endswith('only these keys (the other turns are already reviewed): "turn2", "turn3".')
    assert calls[2][0].endswith('"turn3".') and '"turn2"' not in calls[2][0]
    assert {t: r.diagnosis for t, r in res.turns.items()} == {0: "first try", 1: "second try", 2: "third try"}
    assert res.attempts == 3 and "[retry]" in res.raw


def test_the_agent_instructions_are_shown_in_full():
    ep = _ep([("a", None, None, "o1")])
    ep.system_prompt = "POLICY START " + "rule. " * 2000 + "POLICY END"     # ~12k characters (a Tau policy)
    user = build_reflection_messages(ep)[1]["content"]
    assert ep.system_prompt in user
    clipped = build_reflection_messages(ep, max_system_chars=2000)[1]["content"]
    assert ep.system_prompt not in clipped and "chars cut]" in clipped


def test_prompt_asks_for_the_env_syntax_and_no_echo_legacy_prompt_kept():
    from hero_gym.agents.reflector import LEGACY_REFLECTION_RULES

    rules, legacy_rules = " ".join(REFLECTION_RULES.split()), " ".join(LEGACY_REFLECTION_RULES.split())
    for needle in ("own action syntax", "Do not repeat the agent's wrong action", "the clicked button is not on this page"):
        assert needle in rules and needle not in legacy_rules
    assert '{"name": "<tool>", "arguments": {...}}' in LEGACY_REFLECTION_RULES
    for n in range(1, 8):                                          # the seed rules stay
        assert f"\n{n}. " in REFLECTION_RULES
    web = build_reflection_messages(_webshop_ep(1))[1]["content"]
    assert "## Action syntax\n" in web and "click[<button text>]" in web
    tau = _ep([("<tool_call>{}</tool_call>", {"name": "lookup", "arguments": {"key": "fig"}}, None, "412")])
    assert "<tool_call>" in build_reflection_messages(tau)[1]["content"].split("## Action syntax\n")[1]
    legacy = build_reflection_messages(tau, style="legacy")
    assert legacy[0]["content"] == LEGACY_REFLECTION_RULES and "## Action syntax" not in legacy[1]["content"]


def test_model_targets_come_back_in_the_env_syntax():
    from hero_gym.agents.teachers import hero_note

    def entry(target):
        return {"turn1": {"diagnosis": "The clicked button is not on this page.", "confidence": "high",
                          "next_action_target": target}}

    for target in ("click[b0abc12345]", {"name": "click", "arguments": {"target": "b0abc12345"}},
                   '{"name": "click", "arguments": {"target": "b0abc12345"}}'):
        [res] = LLMReflector(lambda chats, t=target: [json.dumps(entry(t))] * len(chats)).reflect([_webshop_ep(1)])
        refl = res.get(0)
        assert refl.target_text == "click[b0abc12345]" and refl.target_source == "model"
        note = hero_note(refl)
        assert note.endswith("\nBetter action: click[b0abc12345]") and "reply to the user" not in note
        assert "reply to the user" not in note
    # the old failure: a bracket action read as a message to the user (the legacy style keeps it)
    [old] = LLMReflector(lambda chats: [json.dumps(entry("click[b0abc12345]"))], style="legacy").reflect(
        [_webshop_ep(1)])
    assert "Better action: reply to the user: click[b0abc12345]" in hero_note(old.get(0), style="legacy")
    # a message is not an action in WebShop: no target; in a tool env it is the message itself
    [res] = LLMReflector(lambda chats: [json.dumps(entry("Sorry, which size?"))]).reflect([_webshop_ep(1)])
    assert res.get(0).next_action_target is None and "Better action" not in hero_note(res.get(0))
    tau = _ep([("<tool_call>{}</tool_call>", {"name": "lookup", "arguments": {"key": "fig"}}, None, "412")])
    call = '<tool_call>{"name": "answer", "arguments": {"code": "412"}}</tool_call>'
    [res] = LLMReflector(lambda chats: [json.dumps(entry(call))]).reflect([tau])
    assert res.get(0).target_text == '<tool_call>\n{"name": "answer", "arguments": {"code": "412"}}\n</tool_call>'
    [res] = LLMReflector(lambda chats: [json.dumps(entry("The code is 412."))]).reflect([tau])
    assert res.get(0).target_text == "The code is 412." and res.get(0).next_action_target == {"message": "The code is 412."}


def test_hf_policy_rows_get_their_own_budget_within_the_context(tiny_policy):
    class Spy:
        def __init__(self, policy):
            self.policy, self.tokenizer, self.model, self.seen = policy, policy.tokenizer, policy.model, []

        def generate(self, contexts, sampling, max_new_tokens=None):
            self.seen.append((sampling.max_new_tokens, list(max_new_tokens), [len(c) for c in contexts]))
            return self.policy.generate(contexts, sampling, max_new_tokens=max_new_tokens)

    spy = Spy(tiny_policy)
    eps = [_webshop_ep(1), _webshop_ep(3)]
    LLMReflector(spy, tokens_per_turn=4, base_tokens=1, max_retries=0).reflect(eps)
    assert spy.seen[0][:2] == (13, [5, 13])
    ctx = tiny_policy.model.config.max_position_embeddings
    long = _webshop_ep(1)
    long.system_prompt = "word " * (ctx + 10)                 # the prompt alone fills the context
    spy.seen.clear()
    [a, b] = LLMReflector(spy, tokens_per_turn=4, base_tokens=1, max_retries=0).reflect([long, _webshop_ep(1)])
    assert spy.seen[0][1] == [5] and a.turns == {} and a.raw == ""      # not reflected, the other row is
