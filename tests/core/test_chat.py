"""hero_gym.chat: incremental, token-exact chat rendering with the real SmolLM2 (ChatML) tokenizer."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hero_gym.chat import ChatRenderer, TemplateNotPrefixPreserving, episode_to_messages, tokenize_episode
from hero_gym.records import Episode, Turn

pytest.importorskip("transformers")

CHATML_NO_DEFAULT_SYSTEM = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Drops the content of every assistant message but the last (like templates that strip earlier reasoning).
NOT_PREFIX_PRESERVING = (
    "{% for message in messages %}{% if message['role'] == 'assistant' and not loop.last %}"
    "{{'<|im_start|>assistant\n<|im_end|>\n'}}{% else %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Re-renders the whole history differently once a tool message exists.
NOT_PREFIX_PRESERVING_2 = (
    "{% set ns = namespace(tool=false) %}{% for m in messages %}{% if m['role'] == 'tool' %}"
    "{% set ns.tool = true %}{% endif %}{% endfor %}{% if ns.tool %}{{'[tools used]\n'}}{% endif %}"
    + CHATML_NO_DEFAULT_SYSTEM
)


@pytest.fixture(scope="module")
def tok():
    from hero_gym.agents.models import load_default_tokenizer

    return load_default_tokenizer()


@pytest.fixture()
def fresh_tok(tok):
    import copy

    return copy.deepcopy(tok)


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


SYS = {"role": "system", "content": "You look up codes."}
Q = {"role": "user", "content": "What is the code for apple?"}
CALL = '<tool_call>\n{"name": "lookup", "arguments": {"key": "apple"}}\n</tool_call>'


def test_import_does_not_pull_torch():
    code = "import sys, hero_gym.chat; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layout_attributes(tok):
    r = ChatRenderer(tok)
    assert r.generation_prompt == "<|im_start|>assistant\n"
    assert tok.decode(r.generation_prompt_ids) == "<|im_start|>assistant\n"
    assert r.assistant_suffix == "<|im_end|>\n"
    assert r.end_of_turn_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert r.tool_role == "tool" and r.supports_tools is False


def test_prompt_ids_match_template(tok):
    r = ChatRenderer(tok)
    want = enc(tok, tok.apply_chat_template([SYS, Q], tokenize=False, add_generation_prompt=True))
    assert r.prompt_ids([SYS, Q]) == want
    assert want[-len(r.generation_prompt_ids):] == r.generation_prompt_ids


def test_continuation_after_sampled_stop_token(tok):
    r = ChatRenderer(tok)
    ctx = r.prompt_ids([SYS, Q])
    sampled = enc(tok, CALL) + [r.end_of_turn_id]  # what a model would sample, stop token included
    prev = [SYS, Q, {"role": "assistant", "content": CALL}]
    obs = {"role": "tool", "content": "417"}
    cont = r.continuation_ids(prev, [obs], sampled_ids=sampled)
    # only the template's tail after <|im_end|> ("\n"), the tool message and the generation prompt
    assert tok.decode(cont) == "\n<|im_start|>tool\n417<|im_end|>\n<|im_start|>assistant\n"
    # for a canonical sample the incremental context equals a full render of the conversation
    assert ctx + sampled + cont == r.prompt_ids(prev + [obs])
    # default (sampled_ids=None) assumes the stop token was sampled
    assert r.continuation_ids(prev, [obs]) == cont


def test_continuation_after_length_cut_closes_the_message(tok):
    r = ChatRenderer(tok)
    sampled = enc(tok, "I will look it up")  # cut by max_new_tokens: no <|im_end|> sampled
    prev = [SYS, Q, {"role": "assistant", "content": "I will look it up"}]
    cont = r.continuation_ids(prev, [{"role": "user", "content": "go on"}], sampled_ids=sampled)
    assert tok.decode(cont) == "<|im_end|>\n<|im_start|>user\ngo on<|im_end|>\n<|im_start|>assistant\n"


def test_continuation_keeps_non_canonical_sampled_ids(tok):
    """Sampled ids that are not the canonical tokenization of their text stay as sampled."""
    r = ChatRenderer(tok)
    ctx = r.prompt_ids([SYS, Q])
    text = "lookup apple"
    canonical = enc(tok, text)
    odd = [i for ch in text for i in enc(tok, ch)]  # one token per character
    assert odd != canonical and tok.decode(odd) == text
    sampled = odd + [r.end_of_turn_id]
    cont = r.continuation_ids([SYS, Q, {"role": "assistant", "content": text}], [{"role": "tool", "content": "x"}],
                              sampled_ids=sampled)
    nxt = ctx + sampled + cont
    assert nxt[: len(ctx) + len(sampled)] == ctx + sampled
    assert nxt[-len(r.generation_prompt_ids):] == r.generation_prompt_ids


def test_note_ids_layout(tok):
    r = ChatRenderer(tok)
    ctx = r.prompt_ids([SYS, Q])
    teacher = r.note_ids(ctx, "Diagnosis: call lookup with key apple.")
    g = r.generation_prompt_ids
    assert teacher[: len(ctx) - len(g)] == ctx[: len(ctx) - len(g)]
    assert teacher[-len(g):] == g
    note_part = tok.decode(teacher[len(ctx) - len(g):])
    assert note_part == ("<|im_start|>user\nDiagnosis: call lookup with key apple.<|im_end|>\n"
                         "<|im_start|>assistant\n")
    assert teacher == ctx[: len(ctx) - len(g)] + r.note_block_ids("Diagnosis: call lookup with key apple.")
    assert tok.decode(r.note_ids(ctx, "n", role="system")[len(ctx) - len(g):]).startswith("<|im_start|>system\nn")
    with pytest.raises(ValueError):
        r.note_ids(ctx[:-1], "note")


@pytest.mark.parametrize("template", [NOT_PREFIX_PRESERVING, NOT_PREFIX_PRESERVING_2])
def test_non_prefix_preserving_template_raises(fresh_tok, template):
    fresh_tok.chat_template = template
    with pytest.raises(TemplateNotPrefixPreserving, match="not prefix-preserving"):
        ChatRenderer(fresh_tok)


def test_runtime_check_on_real_messages(fresh_tok):
    # passes the probe (no default system), then a real call re-renders: the check raises too
    fresh_tok.chat_template = NOT_PREFIX_PRESERVING
    r = ChatRenderer(fresh_tok, check=False)
    prev = [Q, {"role": "assistant", "content": "a1"}, {"role": "tool", "content": "o"},
            {"role": "assistant", "content": "a2"}]
    with pytest.raises(TemplateNotPrefixPreserving):
        r.continuation_ids(prev, [{"role": "user", "content": "next"}])


def test_tool_role_fallback_when_template_rejects_it(fresh_tok):
    fresh_tok.chat_template = (
        "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('bad role') }}{% endif %}"
        "{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    r = ChatRenderer(fresh_tok)
    assert r.tool_role == "user"
    ids = r.prompt_ids([Q, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "o"}])
    assert "<|im_start|>user\no" in fresh_tok.decode(ids)


def test_tools_passed_to_templates_that_take_them(fresh_tok):
    fresh_tok.chat_template = (
        "{% if tools %}{{'<|im_start|>system\nTOOLS:' + (tools | map(attribute='function') | map(attribute='name') "
        "| join(',')) + '<|im_end|>\n'}}{% endif %}" + CHATML_NO_DEFAULT_SYSTEM
    )
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    r = ChatRenderer(fresh_tok, tools)
    assert r.supports_tools
    assert fresh_tok.decode(r.prompt_ids([Q])).startswith("<|im_start|>system\nTOOLS:lookup<|im_end|>")


def _episode(turns, **kw):
    return Episode(env_id="hero_gym/Lookup-v0", system_prompt=SYS["content"], initial_observation=Q["content"],
                   turns=turns, **kw)


def test_episode_to_messages():
    ep = _episode([Turn(index=0, action_text=CALL, observation="417", observation_role="tool"),
                   Turn(index=1, action_text="hi", observation="use tools", observation_role="user")],
                  metadata={"system_message": "SYS + tool list"})
    msgs = episode_to_messages(ep)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert msgs[0]["content"] == "SYS + tool list" and msgs[2]["content"] == CALL
    assert episode_to_messages(ep, upto=1) == msgs[:4]


def test_tokenize_episode_reuses_recorded_ids(tok):
    r = ChatRenderer(tok)
    ctx0 = r.prompt_ids([SYS, Q])
    a0 = [i for ch in "abc" for i in enc(tok, ch)] + [r.end_of_turn_id]  # non-canonical on purpose
    c1 = ctx0 + a0 + r.continuation_ids([SYS, Q, {"role": "assistant", "content": "abc"}],
                                        [{"role": "tool", "content": "417"}], sampled_ids=a0)
    a1 = enc(tok, "done")  # cut by length
    ep = _episode([
        Turn(index=0, action_text="abc", observation="417", context_token_ids=ctx0, action_token_ids=a0,
             action_logprobs=[-0.5] * len(a0)),
        Turn(index=1, action_text="done", observation="ok", terminated=True, context_token_ids=c1,
             action_token_ids=a1, action_logprobs=[-1.0] * len(a1)),
    ])
    te = tokenize_episode(ep, tok)
    assert te.input_ids == c1 + a1
    assert te.turn_spans == [(len(ctx0), len(ctx0) + len(a0)), (len(c1), len(c1) + len(a1))]
    for (s, e), t in zip(te.turn_spans, ep.turns):
        assert te.input_ids[:s] == t.context_token_ids
        assert te.input_ids[s:e] == t.action_token_ids
    assert sum(te.action_mask) == len(a0) + len(a1)
    assert [i for i, m in zip(te.input_ids, te.action_mask) if m] == a0 + a1
    assert te.logprobs is not None and te.logprobs[len(ctx0)] == -0.5 and te.logprobs[0] == 0.0

    broken = ep.model_copy(deep=True)
    broken.turns[1].context_token_ids = ctx0 + enc(tok, "abc") + c1[len(ctx0) + len(a0):]
    with pytest.raises(TemplateNotPrefixPreserving):
        tokenize_episode(broken, tok)


def test_tokenize_episode_without_recorded_ids_renders(tok):
    ep = _episode([Turn(index=0, action_text=CALL, observation="417"),
                   Turn(index=1, action_text="The code is 417.", observation="ok", terminated=True)])
    te = tokenize_episode(ep, tok)
    r = ChatRenderer(tok)
    msgs = episode_to_messages(ep)
    assert te.input_ids == r.prompt_ids(msgs[:-1])[: len(te.input_ids)]
    (s0, e0), (s1, e1) = te.turn_spans
    assert tok.decode(te.input_ids[s0:e0]) == CALL + "<|im_end|>"
    assert tok.decode(te.input_ids[s1:e1]) == "The code is 417.<|im_end|>"
    assert e1 == len(te.input_ids)


def test_template_that_silently_drops_tool_messages(fresh_tok):
    fresh_tok.chat_template = (
        "{% for m in messages %}{% if m['role'] in ['system', 'user', 'assistant'] %}"
        "{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    r = ChatRenderer(fresh_tok)
    assert r.tool_role == "user"  # observations are never lost
    with pytest.raises(ValueError, match="does not render"):
        r.note_ids(r.prompt_ids([Q]), "note", role="function")
