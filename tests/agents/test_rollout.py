"""collect(): token-exact multi-turn rollouts, batching, budget, overflow, errors, groups."""

from __future__ import annotations

import os
import re

import pytest
import torch

import hero_gym
from hero_gym.agents.policy import Generation, SamplingConfig
from hero_gym.agents.rollout import Task, TurnBudget, collect, default_tool_prompt
from hero_gym.agents.scoring import student_logits
from hero_gym.chat import ChatRenderer, episode_to_messages, tokenize_episode
from hero_gym.envs.example.lookup import LookupEnv
from hero_gym.records import load_jsonl, save_jsonl

ENV = "hero_gym/Lookup-v0"


class OraclePolicy:
    """Reads each context like a model would and replies with token ids: garbage first (if asked),
    then ``lookup(item)``, then ``answer(code)``. Records every generate call."""

    def __init__(self, tokenizer, garbage_first: bool = False, wrong_code: bool = False):
        self.tokenizer = tokenizer
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.calls: list[list[list[int]]] = []
        self.garbage_first = garbage_first
        self.wrong_code = wrong_code

    def reply(self, text: str) -> str:
        item = re.search(r"What is the code for (\w+)\?", text).group(1)
        codes = re.findall(r"<\|im_start\|>tool\n(\d{3})<\|im_end\|>", text)
        n_assistant = text.count("<|im_start|>assistant\n") - 1
        if self.garbage_first and n_assistant == 0:
            return 'let me think <tool_call>{"name": lookup'
        if codes:
            code = "000" if self.wrong_code else codes[-1]
            return f'<tool_call>\n{{"name": "answer", "arguments": {{"code": "{code}"}}}}\n</tool_call>'
        return f'<tool_call>\n{{"name": "lookup", "arguments": {{"key": "{item}"}}}}\n</tool_call>'

    def generate(self, contexts, sampling=None, *, max_new_tokens=None):
        self.calls.append([list(c) for c in contexts])
        out = []
        for i, c in enumerate(contexts):
            text = self.reply(self.tokenizer.decode(c))
            ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.im_end]
            reason = "stop"
            if max_new_tokens is not None and len(ids) > max_new_tokens[i]:
                ids, reason = ids[: max(0, max_new_tokens[i])], "length"
            out.append(Generation(ids, [-0.25] * len(ids), self.tokenizer.decode(ids, skip_special_tokens=True),
                                  reason))
        return out


def assert_token_exact(ep, tokenizer):
    """Every context extends the previous context + the sampled ids; training ids == sampled ids."""
    for a, b in zip(ep.turns, ep.turns[1:]):
        prefix = a.context_token_ids + a.action_token_ids
        assert b.context_token_ids[: len(prefix)] == prefix
    for t in ep.turns:
        assert len(t.action_logprobs) == len(t.action_token_ids)
        assert t.context_token_ids[-4:] == ChatRenderer(tokenizer).generation_prompt_ids
    te = tokenize_episode(ep, tokenizer)
    for t, (s, e) in zip(ep.turns, te.turn_spans):
        assert te.input_ids[:s] == t.context_token_ids
        assert te.input_ids[s:e] == t.action_token_ids
        assert all(te.action_mask[s:e]) and te.logprobs[s:e] == t.action_logprobs
    assert sum(te.action_mask) == sum(len(t.action_token_ids) for t in ep.turns)


def test_token_exact_multi_turn_episode_with_tool_observations(smol_tokenizer):
    policy = OraclePolicy(smol_tokenizer, garbage_first=True)
    [ep] = collect(policy, ENV, n_episodes=1, seed=3, num_envs=1)
    assert [t.action_error is not None for t in ep.turns] == [True, False, False]  # parse error, then tools
    assert ep.turns[0].action_error["kind"] == "parse" and ep.turns[0].observation.startswith("Error:")
    assert ep.turns[1].observation_role == "tool" and re.fullmatch(r"\d{3}", ep.turns[1].observation)
    assert ep.turns[2].terminated and ep.success and ep.total_reward == 1.0
    assert ep.metadata["stop_reason"] == "terminated" and not ep.metadata["cut_short"]
    assert ep.task_id == "lookup-" + str(LookupEnv().reset(seed=3)[1]["task_index"])
    assert_token_exact(ep, smol_tokenizer)
    # the sampled ids are exactly those the policy returned for that context
    for t, call in zip(ep.turns, policy.calls):
        assert call == [t.context_token_ids]
    # the model saw: system prompt + tool descriptions in the hermes format, then the first observation
    first = smol_tokenizer.decode(ep.turns[0].context_token_ids)
    assert first.startswith("<|im_start|>system\n" + ep.system_prompt)
    assert "<tool_call>" in ep.metadata["system_message"] and '"name": "lookup"' in ep.metadata["system_message"]
    assert first.endswith("<|im_start|>user\n" + ep.initial_observation + "<|im_end|>\n<|im_start|>assistant\n")
    # for canonical samples, the incremental context equals a full render of the recorded chat
    r = ChatRenderer(smol_tokenizer)
    msgs = episode_to_messages(ep)
    assert ep.turns[2].context_token_ids == r.prompt_ids(msgs[:-2])


def test_tiny_model_rollouts_are_batched_and_token_exact(make_tiny_policy, smol_tokenizer, tmp_path):
    policy = make_tiny_policy(lora="default")
    calls = []
    orig = policy.generate

    def spy(contexts, sampling=None, **kw):
        calls.append(len(contexts))
        return orig(contexts, sampling, **kw)

    policy.generate = spy
    sc = SamplingConfig(max_new_tokens=8, temperature=1.0, seed=0)
    eps = collect(policy, ENV, n_episodes=3, num_envs=3, sampling=sc, env_kwargs={"max_turns": 3})
    assert len(eps) == 3
    assert calls == [3, 3, 3]  # one generate call per step for all active envs
    for ep in eps:
        assert ep.num_turns == 3 and ep.turns[-1].truncated and ep.metadata["stop_reason"] == "truncated"
        assert_token_exact(ep, smol_tokenizer)
        # random text: each reply is cut by length, the template's <|im_end|>\n closes it in the next context
        t0, t1 = ep.turns[0], ep.turns[1]
        between = t1.context_token_ids[len(t0.context_token_ids) + len(t0.action_token_ids):]
        assert smol_tokenizer.decode(between).startswith("<|im_end|>\n<|im_start|>")
        # recorded log-probs are the policy's own (temperature 1): the trainer's scoring recomputes them
        with torch.no_grad():
            logits, layout = student_logits(policy.model, [ep])
        lps = torch.log_softmax(logits.float(), -1).gather(-1, layout.action_ids[:, None]).squeeze(-1)
        assert torch.allclose(torch.tensor([x for t in ep.turns for x in t.action_logprobs]), lps, atol=1e-4)
    save_jsonl(eps, tmp_path / "eps.jsonl")
    assert load_jsonl(tmp_path / "eps.jsonl") == eps


def test_budget_counts_env_turns(smol_tokenizer):
    policy = OraclePolicy(smol_tokenizer, garbage_first=True)  # 3 turns per episode
    budget = TurnBudget(total=7)
    eps = collect(policy, ENV, n_episodes=5, num_envs=2, budget=budget)
    assert budget.spent == 7 and budget.remaining == 0 and budget.exhausted
    assert sum(ep.num_turns for ep in eps) == 7
    reasons = [ep.metadata["stop_reason"] for ep in eps]
    assert reasons.count("terminated") == 2 and set(reasons[2:]) == {"budget"}
    assert all(ep.metadata["cut_short"] for ep in eps if ep.metadata["stop_reason"] == "budget")
    assert collect(policy, ENV, n_episodes=2, budget=budget) == []  # nothing left
    unlimited = TurnBudget()
    collect(policy, ENV, n_episodes=2, budget=unlimited)
    assert unlimited.spent == 6 and unlimited.total is None
    shared = TurnBudget(total=100)
    collect(policy, ENV, n_episodes=2, budget=shared)
    collect(policy, ENV, n_episodes=1, turn_budget=shared)  # alias
    assert shared.spent == 9 and shared.remaining == 91


def test_context_overflow_ends_the_episode_gracefully(make_tiny_policy, smol_tokenizer):
    policy = make_tiny_policy(lora=None)
    env = LookupEnv(max_turns=10)
    first_len = len(ChatRenderer(smol_tokenizer).prompt_ids(
        [{"role": "system", "content": "x"}, {"role": "user", "content": "What is the code for apple?"}]))
    limit = 330
    sc = SamplingConfig(max_new_tokens=40, temperature=1.0, seed=1)
    [ep] = collect(policy, env, n_episodes=1, sampling=sc, max_context_tokens=limit)
    assert first_len < limit
    assert ep.metadata["stop_reason"] == "context_overflow" and ep.metadata["cut_short"]
    assert 1 <= ep.num_turns < 10
    for t in ep.turns:
        assert len(t.context_token_ids) + len(t.action_token_ids) <= limit
    assert_token_exact(ep, smol_tokenizer)
    # a first prompt that does not fit: the episode is recorded with no turns
    [ep2] = collect(policy, env, n_episodes=1, sampling=sc, max_context_tokens=20)
    assert ep2.num_turns == 0 and ep2.metadata["stop_reason"] == "context_overflow"
    assert ep2.initial_observation.startswith("What is the code")


class FlakyLookup(LookupEnv):
    """Raises inside ``_step`` on its second turn (an env bug, not an agent error)."""

    def _step(self, action):
        if self.turn == 2:
            raise KeyError("database went away")
        return super()._step(action)


def test_env_exceptions_and_parse_errors_do_not_lose_episodes(smol_tokenizer):
    policy = OraclePolicy(smol_tokenizer, garbage_first=True)
    envs = [FlakyLookup(), LookupEnv()]
    eps = collect(policy, envs, n_episodes=2)
    assert len(eps) == 2
    by_reason = {ep.metadata["stop_reason"]: ep for ep in eps}
    bad = by_reason["env_error"]
    assert bad.num_turns == 2 and "database went away" in bad.metadata["env_error"]
    assert bad.turns[-1].action_error["kind"] == "env_error" and bad.turns[-1].action_token_ids
    assert bad.turns[0].action_error["kind"] == "parse"
    assert by_reason["terminated"].success
    # a failing reset is recorded too and the remaining tasks still run
    class BrokenReset(LookupEnv):
        def _reset(self, *, seed, options):
            if options.get("task_index") == 1:
                raise RuntimeError("no such task")
            return super()._reset(seed=seed, options=options)

    eps = collect(policy, BrokenReset(), tasks=[{"options": {"task_index": i}} for i in range(3)])
    assert [ep.metadata["stop_reason"] for ep in eps] == ["terminated", "env_error", "terminated"]


def test_groups_repeat_the_same_task(smol_tokenizer):
    policy = OraclePolicy(smol_tokenizer)
    eps = collect(policy, ENV, tasks=[Task(seed=1), Task(options={"task_index": 2}, task_id="t2")], group_size=3,
                  num_envs=4)
    assert len(eps) == 6
    g1, g2 = eps[:3], eps[3:]
    assert len({ep.task_id for ep in g1}) == 1 and {ep.task_id for ep in g2} == {"t2"}
    assert len({ep.initial_observation for ep in g1}) == 1 and len({ep.seed for ep in g1}) == 1
    assert [ep.metadata["group_index"] for ep in eps] == [0, 1, 2, 0, 1, 2]
    assert len({ep.episode_id for ep in eps}) == 6
    assert all(ep.success for ep in eps)


def test_default_tool_prompt_formats():
    tools = [t.to_openai() for t in LookupEnv().tools()]
    hermes = default_tool_prompt(tools, "hermes")
    assert "<tool_call>" in hermes and '"name": "answer"' in hermes
    assert "search[" in default_tool_prompt(tools, "bracket")
    assert "tool_name(arg=" in default_tool_prompt(tools, "functional")
    assert default_tool_prompt([], "hermes") == ""
    # the format described is the one the env's parser accepts
    call = '<tool_call>\n{"name": "lookup", "arguments": {"key": "apple"}}\n</tool_call>'
    assert hero_gym.parse_reply(call, "hermes").calls[0].name == "lookup"


@pytest.mark.slow
def test_smollm2_rollouts_on_lookup_are_token_exact():
    from hero_gym.agents.models import load_default_model
    from hero_gym.agents.policy import HFPolicy

    model, tok = load_default_model()
    policy = HFPolicy(model, tok, lora="default")
    eps = collect(policy, ENV, n_episodes=3, num_envs=3, env_kwargs={"max_turns": 2},
                  sampling=SamplingConfig(max_new_tokens=64, temperature=0.7, seed=0))
    assert len(eps) == 3
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for ep in eps:
        assert ep.num_turns == 2
        assert_token_exact(ep, tok)
        for t in ep.turns:  # a reply either ends with the sampled <|im_end|> or was cut at max_new_tokens
            assert (t.action_token_ids[-1] == im_end) == (t.info["generation_finish_reason"] == "stop")
    for ep in eps:
        for t in ep.turns:
            print(repr(t.action_text[:100]), "->", repr(t.observation[:60]))


def test_kv_cache_rollouts_equal_re_encoding(make_tiny_policy, smol_tokenizer):
    """Greedy rollouts give the same ids with and without the per-slot KV cache (and with the prefix shared
    by episodes starting together encoded once): several envs in a batch, multi-turn, episodes ending at
    different turns and new ones starting in the freed slots."""
    sc = SamplingConfig(max_new_tokens=6, temperature=0.0)
    runs = {}
    for cached, share in ((False, False), (True, False), (True, True)):
        policy = make_tiny_policy(lora="default")
        policy.share_prefix = share
        envs = [LookupEnv(max_turns=2), LookupEnv(max_turns=4), LookupEnv(max_turns=3)]
        eps = collect(policy, envs, n_episodes=5, sampling=sc, kv_cache=cached)
        runs[cached, share] = (eps, policy.encoded_tokens)
    (plain, plain_encoded), (fast, fast_encoded) = runs[False, False], runs[True, False]
    shared, shared_encoded = runs[True, True]
    assert [ep.num_turns for ep in plain] != [plain[0].num_turns] * 5  # some episodes end earlier
    assert sum(ep.num_turns for ep in plain) > 10
    assert len({tuple(t.action_token_ids) for ep in plain for t in ep.turns}) > 3  # not degenerate
    for other in (fast, shared):
        for a, b in zip(plain, other):
            assert [t.context_token_ids for t in a.turns] == [t.context_token_ids for t in b.turns]
            assert [t.action_token_ids for t in a.turns] == [t.action_token_ids for t in b.turns]
            for ta, tb in zip(a.turns, b.turns):
                assert max(abs(x - y) for x, y in zip(ta.action_logprobs, tb.action_logprobs)) < 1e-4
    # re-encoding runs every context through the model; the cache only the tokens after the cached prefix
    # (the previous context + the reply but its last token)
    assert plain_encoded == sum(len(t.context_token_ids) for ep in plain for t in ep.turns)
    expected = sum(len(ep.turns[0].context_token_ids) for ep in fast) + sum(
        len(b.context_token_ids) - len(a.context_token_ids) - len(a.action_token_ids) + 1
        for ep in fast for a, b in zip(ep.turns, ep.turns[1:]))
    assert fast_encoded == expected < plain_encoded / 2
    # the three first episodes start in one call: the prefix their first contexts share is encoded once
    first = [ep.turns[0].context_token_ids for ep in shared[:3]]
    common = len(os.path.commonprefix(first))
    assert common >= 16
    assert shared_encoded <= fast_encoded - 2 * common


def test_kv_cache_is_skipped_for_policies_without_one(smol_tokenizer):
    policy = OraclePolicy(smol_tokenizer)  # generate() takes no kv_caches: collect must not pass them
    [ep] = collect(policy, ENV, n_episodes=1, kv_cache=True)
    assert ep.success
