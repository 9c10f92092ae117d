"""A learning test that can fail: does :func:`hero_gym.agents.trainer.update` move the policy the way the
note says, on the turn the note belongs to?

Set-up (tiny random Llama, CPU, seconds): a *note reader* is first fine-tuned to behave like an
instruction-following model. In two states of one episode (turn 1: the question; turn 2: after the
lookup's result) it splits its probability between two candidate actions per state when it sees no
note or a neutral note, and follows a note that names one of them. Turn 1: ``lookup fig`` (right) vs
``lookup kiwi``; turn 2: ``answer 412`` (right) vs ``answer 999``. Then a fresh LoRA on the reader is
trained with the default HERO update on two-turn episodes that sampled both candidates, under:

* right: each turn's note names that turn's right action;
* neutral (the control): a note with no information;
* wrong: each turn's note names that turn's wrong action;
* swapped: the right notes applied to the *wrong turns* (turn 1 gets turn 2's note and vice versa).

The test asserts, for the right action's log-prob in *each* state, right > neutral > wrong and
right > swapped. It fails if the note is ignored (right ≈ neutral) or acts on the wrong turn
(right ≈ swapped); the diagnosis-only variant has no verbatim "Better action" line to copy.
"""
import copy
import json

import pytest
import torch

from hero_gym.agents.policy import HFPolicy
from hero_gym.agents.reflector import TurnReflection
from hero_gym.agents.scoring import student_logits
from hero_gym.agents.teachers import hero_note
from hero_gym.agents.trainer import TrainConfig, update
from hero_gym.chat import ChatRenderer
from hero_gym.records import Episode, Turn

LOOKUP = "hero_gym/Lookup-v0"
NEUTRAL = TurnReflection("This turn was reviewed; nothing in particular stands out about it.", "high")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _episode(pairs, rewards=None):
    turns = [Turn(index=i, action_text="", observation="", context_token_ids=c, action_token_ids=a)
             for i, (c, a) in enumerate(pairs)]
    r = rewards or 0.0
    if rewards is not None:
        turns[-1].terminated = True
    return Episode(env_id=LOOKUP, task_id="lookup-0", initial_observation="", turns=turns, total_reward=r,
                   success=bool(r))


def _token_logprobs(model, pairs):
    """Per turn, the model's log-probs of the action tokens in their context."""
    ep = _episode(pairs)
    with torch.no_grad():
        logits, lay = student_logits(model, [ep])
    lp = torch.log_softmax(logits.float(), -1).gather(-1, lay.action_ids[:, None]).squeeze(-1)
    return [lp[s.start:s.start + s.length].tolist() for s in lay.spans]


def _logp(model, ctx, act):
    return sum(_token_logprobs(model, [(ctx, act)])[0])


def _say(call):
    return f"{call['name']} {next(iter(call['arguments'].values()))}"


def _names(call):
    # the target written as the actions are in this world ("lookup fig"): the env's own syntax
    return TurnReflection(f"The right action at this point was {_say(call)}.", "high", call, target_text=_say(call))


def _diagnosis_only(call):
    arg = next(iter(call["arguments"].values()))
    return TurnReflection(f"Here the {call['name']} call needed {arg}: {arg} is what this step asks for.", "high", None)


@pytest.fixture(scope="module")
def world(smol_tokenizer, fit_reader):
    """The two states, the two actions, and the note reader (see the module docstring)."""
    tok = smol_tokenizer
    torch.manual_seed(0)
    r = ChatRenderer(tok)
    msgs = [{"role": "system", "content": "Use the tools lookup and answer."},
            {"role": "user", "content": "What is the code for fig?"}]
    ctx1 = r.prompt_ids(msgs)
    calls = {"X": {"name": "lookup", "arguments": {"key": "fig"}}, "Y": {"name": "lookup", "arguments": {"key": "kiwi"}},
             "Z": {"name": "answer", "arguments": {"code": "412"}}, "W": {"name": "answer", "arguments": {"code": "999"}}}
    text = {k: f"{c['name']} {next(iter(c['arguments'].values()))}" for k, c in calls.items()}
    acts = {k: r.encode(t) + [r.end_of_turn_id] for k, t in text.items()}
    prev = msgs + [{"role": "assistant", "content": text["X"]}]
    ctx2 = ctx1 + acts["X"] + r.continuation_ids(prev, [{"role": "tool", "content": "412"}], sampled_ids=acts["X"])
    states = [ctx1, ctx2]
    data = []
    for ctx, options, foreign in ((ctx1, "XY", "ZW"), (ctx2, "ZW", "XY")):
        for k in options:
            data.append((ctx, acts[k]))                                   # no note: split
            data.append((r.note_ids(ctx, hero_note(NEUTRAL)), acts[k]))   # neutral note: split
            for form in (_names, _diagnosis_only):
                data.append((r.note_ids(ctx, hero_note(form(calls[k]))), acts[k]))   # a note naming k: do k
                for f in foreign:                                                     # another turn's: split
                    data.append((r.note_ids(ctx, hero_note(form(calls[f]))), acts[k]))
    model = fit_reader(data, steps=100)
    for ctx, right, wrong in ((ctx1, "X", "Y"), (ctx2, "Z", "W")):   # the reader reads both note forms
        for form in (_names, _diagnosis_only):
            assert _logp(model, r.note_ids(ctx, hero_note(form(calls[right]))), acts[right]) > \
                _logp(model, r.note_ids(ctx, hero_note(form(calls[wrong]))), acts[right]) + 2.0
    return {"tok": tok, "model": model, "states": states, "acts": acts, "calls": calls}


def _train_with_notes(world, notes_for_state, config, n_updates=4):
    """Fresh LoRA on the reader; ``n_updates`` default updates on episodes that sampled X and Y in both
    states; returns the right action's log-prob per state, before and after."""
    torch.manual_seed(0)
    policy = HFPolicy(copy.deepcopy(world["model"]), world["tok"], lora="default", device="cpu")
    s1, s2 = world["states"]
    a = world["acts"]
    episodes = []
    for pairs in ([(s1, a["X"]), (s2, a["Z"])], [(s1, a["Y"]), (s2, a["W"])]):
        ep = _episode(pairs)
        for turn, lps in zip(ep.turns, _token_logprobs(policy.model, pairs)):
            turn.action_logprobs = lps          # as recorded at sampling time
        episodes.append(ep)
    notes = [[hero_note(n) for n in notes_for_state] for _ in episodes]
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=config.lr)
    before = [_logp(policy.model, s1, a["X"]), _logp(policy.model, s2, a["Z"])]
    from hero_gym.agents.teachers import TeacherWeights

    teacher = TeacherWeights(policy.model, config.teacher, config.ema_rate)
    for _ in range(n_updates):
        stats = update(policy, opt, episodes, notes, config, teacher=teacher)
        assert stats.stepped and stats.scored_turns == 4
    return before, [_logp(policy.model, s1, a["X"]), _logp(policy.model, s2, a["Z"])]


def _conditions(world, form):
    c = world["calls"]
    return {"right": [form(c["X"]), form(c["Z"])], "neutral": [NEUTRAL, NEUTRAL],
            "wrong": [form(c["Y"]), form(c["W"])], "swapped": [form(c["Z"]), form(c["X"])]}


def _check_right_neutral_wrong(world, form, config):
    after = {name: _train_with_notes(world, notes, config)[1] for name, notes in _conditions(world, form).items()}
    for state in (0, 1):
        r, n, w, s = (after[k][state] for k in ("right", "neutral", "wrong", "swapped"))
        assert r > n + 0.05 and w < n - 0.05 and r > s + 0.05, (state, after)
    return after


@pytest.mark.parametrize("loss", ["jsd", "forward_kl", "reverse_kl", "sampled"])
def test_right_note_beats_neutral_beats_wrong_on_each_turn(world, loss):
    """(a) + (c) + (d): right > neutral > wrong in both states, default teacher (EMA), each loss."""
    config = TrainConfig(method="hero", loss=loss, lr=5e-3)
    assert config.teacher == "ema" and config.topk == 100 and config.topk_source == "student"
    _check_right_neutral_wrong(world, _names, config)


def test_diagnosis_only_notes_without_a_target_line(world):
    """(b): no "Better action" line in any note; the diagnosis alone must carry the signal."""
    assert "Better action" not in hero_note(_diagnosis_only(world["calls"]["X"]))
    _check_right_neutral_wrong(world, _diagnosis_only, TrainConfig(method="hero", lr=5e-3))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grpo_positive_advantage_raises_negative_lowers(world, sign):
    torch.manual_seed(0)
    policy = HFPolicy(copy.deepcopy(world["model"]), world["tok"], lora="default", device="cpu")
    s1 = world["states"][0]
    X, Y = world["acts"]["X"], world["acts"]["Y"]
    episodes = [_episode([(s1, X)], rewards=1.0 if sign > 0 else 0.0),
                _episode([(s1, Y)], rewards=0.0 if sign > 0 else 1.0)]
    config = TrainConfig(method="grpo", lr=1e-3)
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=config.lr)
    before = _logp(policy.model, s1, X)
    for _ in range(4):
        assert update(policy, opt, episodes, None, config).stepped
    after = _logp(policy.model, s1, X)
    assert (after - before) * sign > 0.1, (before, after)
