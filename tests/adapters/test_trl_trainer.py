"""HEROTrainer on TRL's real GRPOTrainer (tiny model, CPU): a training step, equality with hero-gym's own
``update`` loss, per-turn notes, the model reflector, and the docs' example."""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
pytest.importorskip("datasets")


import hero_gym  # noqa: E402
from hero_gym.adapters.trl import HEROConfig, HEROTrainer, environment_factory, task_dataset  # noqa: E402
from hero_gym.agents.models import tiny_model  # noqa: E402
from hero_gym.agents.policy import HFPolicy  # noqa: E402
from hero_gym.agents.reflector import FunctionReflector, TurnReflection  # noqa: E402
from hero_gym.agents.teachers import TeacherWeights  # noqa: E402
from hero_gym.agents.trainer import TrainConfig  # noqa: E402
from hero_gym.agents.update import update  # noqa: E402
from hero_gym.records import Episode, Turn  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
LOOKUP = "hero_gym/Lookup-v0"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "trl.md"



def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=96, max_steps=1, logging_steps=1, report_to="none", save_strategy="no",
                learning_rate=1e-3, seed=0, bf16=False, disable_tqdm=True, max_tool_calling_iterations=2,
                shuffle_dataset=False, method="hero_rules")
    base.update(kw)
    return HEROConfig(**base)


def _trainer(tok, tmp_path, seed=0, **kw):
    return HEROTrainer(model=tiny_model(tok, seed=seed), processing_class=tok, args=_config(tmp_path, **kw),
                       train_dataset=task_dataset(LOOKUP, task_indices=[0, 1]),
                       environment_factory=environment_factory(LOOKUP))


def _prompt_ids(trainer, row):
    env = environment_factory(LOOKUP)()
    messages = [*row["prompt"][:-1], {"role": "user", "content": env.reset(**row)}]
    return trainer.processing_class.apply_chat_template(messages, tools=trainer.tools, add_generation_prompt=True,
                                                        tokenize=True, return_dict=True)["input_ids"]


def _teach(trainer, prompt_ids, completion, steps=200):
    """Fit the tiny model to emit ``completion`` after ``prompt_ids`` (so its rollouts make a real tool call)."""
    tok = trainer.processing_class
    c_ids = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([list(prompt_ids) + c_ids])
    model = trainer.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        hidden = model.model(input_ids=ids).last_hidden_state[0, len(prompt_ids) - 1:-1]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), torch.tensor(c_ids))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.002:   # ~0.96 for the whole call at temperature 1
            break
    assert loss.item() < 0.01


def _call(name, **arguments):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call><|im_end|>"


# ----------------------------------------------------------------------------- a real training step


def test_one_step_on_lookup_trains_and_logs_distill_loss_and_env_reward(tool_tokenizer, tmp_path):
    trainer = _trainer(tool_tokenizer, tmp_path)
    data = trainer.train_dataset
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}   # the EMA teacher's start
    _teach(trainer, _prompt_ids(trainer, data[0]), _call("lookup", key="nothing-here"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()

    batch = trainer._hero_batch
    assert len(batch.episodes) == 4
    # the taught call reached the env through TRL's tool loop: a multi-turn episode per rollout
    for ep, env in zip(batch.episodes, trainer.environments):
        assert ep.turns[0].tool_call == hero_gym.ToolCall(name="lookup", arguments={"key": "nothing-here"})
        assert ep.turns[0].observation == env.steps[0].observation == "Error: no item named 'nothing-here'."
        assert len(ep.turns) >= 2 and ep.turns[1].context_token_ids[:len(ep.turns[0].context_token_ids)] == \
            ep.turns[0].context_token_ids
    assert batch.distill_tokens > 0
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "no trainable weight changed"
    row = next(r for r in trainer.state.log_history if "hero/distill_loss" in r)
    assert math.isfinite(row["hero/distill_loss"]) and row["hero/distill_loss"] > 0
    assert row["loss"] == pytest.approx(row["hero/distill_loss"], rel=1e-5)   # grpo_weight 0: the loss is the SD loss
    env_rewards = [e.reward for e in trainer.environments]
    assert row["rewards/Lookup_v0/mean"] == pytest.approx(sum(env_rewards) / len(env_rewards))
    assert row["hero/env_success"] == pytest.approx(sum(ep.success for ep in batch.episodes) / 4)
    # the EMA teacher moved by SDPO's rate towards the new weights
    name = changed[0]
    p = dict(trainer.model.named_parameters())[name].detach()
    expect = start[name] + 0.05 * (p - start[name])
    assert torch.allclose(trainer.hero_teacher.shadow[name], expect, atol=1e-6)


# ----------------------------------------------------------------------------- a fixed batch


def _fixed_rollouts(trainer):
    """Two rollouts in TRL's own format (prompt ids, completion ids with TRL's tool suffixes, tool_mask, messages),
    one with three replies and one with two, built with TRL's ``_get_tool_suffix_ids``."""
    tok = trainer.processing_class
    data = trainer.train_dataset
    rows, prompts, prompt_ids, completion_ids, tool_masks, messages, logprobs = [], [], [], [], [], [], []
    gen = torch.Generator().manual_seed(0)
    plans = [[("lookup", {"key": "apple"}, "A-100"), ("lookup", {"key": "plum"}, "Error: no item named 'plum'."),
              (None, "I am done.", None)],
             [("answer", {"code": "zzz"}, "Wrong code."), (None, "Sorry.", None)]]
    for r, plan in enumerate(plans):
        row = data[r]
        ids = _prompt_ids(trainer, row)
        comp, mask, msgs = [], [], []
        for name, args, obs in plan:
            text = _call(name, **args) if name else args + "<|im_end|>"
            a = tok(text, add_special_tokens=False)["input_ids"]
            comp += a
            mask += [1] * len(a)
            if name:
                msgs.append({"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": name, "arguments": args}}]})
                tool = {"role": "tool", "name": name, "content": obs}
                msgs.append(tool)
                s = trainer._get_tool_suffix_ids([tool])
                comp += s
                mask += [0] * len(s)
            else:
                msgs.append({"role": "assistant", "content": args})
        rows.append(row)
        prompts.append(row["prompt"])
        prompt_ids.append(ids)
        completion_ids.append(comp)
        tool_masks.append(mask)
        messages.append(msgs)
        with torch.no_grad():   # behaviour log-probs: the model's own, off by up to e^{+-1} (some weights clip at 2)
            lp = torch.log_softmax(trainer.model(input_ids=torch.tensor([ids + comp])).logits[0, len(ids) - 1:-1], -1)
        noise = 2.0 * torch.rand(len(comp), generator=gen) - 1.0
        logprobs.append((lp.gather(-1, torch.tensor(comp)[:, None])[:, 0] + noise).tolist())
    return rows, prompts, prompt_ids, completion_ids, tool_masks, messages, logprobs


def _hand_episodes(prompt_ids, completion_ids, tool_masks, logprobs):
    """The same rollouts as hero-gym episodes, built here directly from the token lists."""
    eps = []
    for p, c, m, lp in zip(prompt_ids, completion_ids, tool_masks, logprobs):
        turns, i = [], 0
        while i < len(c):
            if not m[i]:
                i += 1
                continue
            j = i
            while j < len(c) and m[j]:
                j += 1
            turns.append(Turn(index=len(turns), action_text="", observation="", context_token_ids=list(p) + c[:i],
                              action_token_ids=c[i:j], action_logprobs=lp[i:j]))
            i = j
        eps.append(Episode(env_id="x", initial_observation="", turns=turns))
    return eps


NOTES = [["Note A: the lookup of apple was right.", None, "Note C: answer A-100 instead of chatting."],
         ["Note D: look the code up before answering.", "Note E: the episode is over; stop."]]


def _perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def _trl_side(trainer, fixed, notes, rows=None):
    rows_, prompts, pids, cids, masks, msgs, lps = fixed
    trainer.environments = None
    eps = trainer.hero_episodes(rows_, prompts, pids, cids, masks, msgs, lps)
    trainer._hero_batch = trainer.hero_batch(eps, notes)
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    rows = list(range(len(eps))) if rows is None else rows
    loss = trainer.compute_loss(trainer.model, {"hero_index": torch.tensor(rows)})
    return loss


@pytest.mark.parametrize("method_kw", [dict(), dict(distill_topk=None, is_clip=None), dict(distill_loss="reverse_kl")])
def test_loss_equals_hero_update_on_the_same_tokens_and_notes(tool_tokenizer, tmp_path, method_kw):
    trainer = _trainer(tool_tokenizer, tmp_path, seed=3, **method_kw)
    hero_model = copy.deepcopy(trainer.model)
    hero_teacher = TeacherWeights(hero_model, "ema", 0.05)   # both teachers hold the initial weights ...
    _perturb(trainer.model, 1)                                # ... and both students move away from them
    _perturb(hero_model, 1)
    fixed = _fixed_rollouts(trainer)

    loss = _trl_side(trainer, fixed, NOTES)
    loss.backward()
    trl_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in trainer.model.parameters() if p.grad is not None))

    policy = HFPolicy(hero_model, tool_tokenizer, lora=None, device="cpu")
    cfg = TrainConfig(method="hero_rules", loss=trainer.args.distill_loss, topk=trainer.args.distill_topk,
                      is_clip=trainer.args.is_clip, gradient_checkpointing=False)
    eps = _hand_episodes(*fixed[2:5], fixed[6])
    stats = update(policy, torch.optim.SGD(policy.trainable_parameters(), lr=0.0), eps, NOTES, cfg,
                   teacher=hero_teacher)
    assert stats.distill_tokens == trainer._hero_batch.distill_tokens > 0
    assert stats.scored_turns == 4 and stats.masked_turns == 1
    assert stats.loss > 1e-3 and float(loss) == pytest.approx(stats.loss, abs=1e-5)
    assert float(trl_norm) == pytest.approx(stats.grad_norm, rel=1e-4)
    # TRL's gradient accumulation: the rows' losses add up to the batch loss
    parts = [float(_trl_side(trainer, fixed, NOTES, rows=[r])) for r in (0, 1)]
    assert sum(parts) == pytest.approx(stats.loss, abs=1e-5)


def test_notes_are_per_turn(tool_tokenizer, tmp_path):
    trainer = _trainer(tool_tokenizer, tmp_path, seed=3)
    _perturb(trainer.model, 1)
    fixed = _fixed_rollouts(trainer)
    loss = float(_trl_side(trainer, fixed, NOTES))
    batch = trainer._hero_batch
    renderer = trainer.hero_policy._hero_renderer
    for ep, notes, ctxs in zip(batch.episodes, NOTES, batch.teacher_contexts):
        for t, (turn, note, ctx) in enumerate(zip(ep.turns, notes, ctxs)):
            if note is None:
                assert ctx is None
                continue
            assert ctx == renderer.note_ids(turn.context_token_ids, note)   # the turn's own context + its note
            text = tool_tokenizer.decode(ctx)
            assert text.count(note) == 1 and text.endswith("<|im_start|>assistant\n")
            others = [n for n in notes if n is not None and n != note]
            assert not any(o in text for o in others), f"turn {t} saw another turn's note"
    # a trainer that showed every turn the whole trajectory's notes would compute another loss
    joined = [["\n".join(n for n in ns if n) if n else None for n in ns] for ns in NOTES]
    other = float(_trl_side(trainer, fixed, joined))
    assert abs(other - loss) > 1e-4


# ----------------------------------------------------------------------------- notes from the registry


def test_model_reflector_generates_through_the_trainers_model(tool_tokenizer, tmp_path):
    trainer = _trainer(tool_tokenizer, tmp_path, method="hero", reflector_max_new_tokens=8, reflector_retries=0)
    chats = [[{"role": "user", "content": "Review turn 1."}]]
    got = trainer.hero_policy.generate_text(chats, max_new_tokens=6, temperature=0.0)
    ids = trainer.hero_policy._hero_renderer.prompt_ids(chats[0])
    with torch.no_grad():
        ref = trainer.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=6, do_sample=False,
                                     eos_token_id=list(trainer.eos_token_ids))
    assert got == [tool_tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True)]
    calls = []
    hook = trainer.model.register_forward_hook(lambda *a: calls.append(1))
    fixed = _fixed_rollouts(trainer)
    eps = trainer.hero_episodes(*fixed[:6], fixed[6])
    notes = trainer.hero_notes(eps)          # the random tiny model writes no parsable JSON: every turn masked
    hook.remove()
    assert calls and all(n is None for row in notes for n in row)


def test_hero_and_shuffled_notes_come_from_the_registry(tool_tokenizer, tmp_path):
    def diagnose(ep):
        return {t: TurnReflection(f"diag {ep.metadata['trl_row']}.{t}", "high") for t in range(len(ep.turns))}

    got = {}
    for method in ("hero", "hero_shuffled"):
        trainer = HEROTrainer(model=tiny_model(tool_tokenizer, seed=0), processing_class=tool_tokenizer,
                              args=_config(tmp_path, method=method), train_dataset=task_dataset(LOOKUP),
                              environment_factory=environment_factory(LOOKUP), reflector=FunctionReflector(diagnose))
        fixed = _fixed_rollouts(trainer)
        got[method] = trainer.hero_notes(trainer.hero_episodes(*fixed[:6], fixed[6]))
    assert [[n.splitlines()[-1] for n in row] for row in got["hero"]] == [["diag 0.0", "diag 0.1", "diag 0.2"],
                                                                          ["diag 1.0", "diag 1.1"]]
    # two episodes of two tasks: each gets the other's diagnoses, in order and repeated (methods.shuffled_notes)
    assert [[n and n.splitlines()[-1] for n in row] for row in got["hero_shuffled"]] == \
        [["diag 1.0", "diag 1.1", "diag 1.0"], ["diag 0.0", "diag 0.1"]]


def test_config_errors(tmp_path, tool_tokenizer):
    with pytest.raises(ValueError, match="unknown method"):
        _config(tmp_path, method="nope")
    with pytest.raises(TypeError, match="HEROConfig"):
        HEROTrainer(model=tiny_model(tool_tokenizer), processing_class=tool_tokenizer,
                    args=trl.GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
                    train_dataset=task_dataset(LOOKUP), environment_factory=environment_factory(LOOKUP))


# ----------------------------------------------------------------------------- the docs' example


def test_docs_example_runs(tool_tokenizer, tmp_path, monkeypatch):
    text = DOCS.read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "HEROTrainer(" in b)
    monkeypatch.chdir(tmp_path)
    ns = {"model": tiny_model(tool_tokenizer, seed=0), "tokenizer": tool_tokenizer}
    exec(compile(code, str(DOCS), "exec"), ns)
    trainer = ns["trainer"]
    assert trainer.state.global_step == trainer.args.max_steps
    rows = [r for r in trainer.state.log_history if "hero/distill_loss" in r]
    assert rows and all("rewards/Lookup_v0/mean" in r for r in rows)


def test_behaviour_logprobs_prefer_the_sampler(tool_tokenizer, tmp_path):
    trainer = _trainer(tool_tokenizer, tmp_path)
    ids = [[1, 2, 3], [4, 5]]
    old = {"old_per_token_logps": torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, 0.0]])}
    vllm = trainer._behaviour_logprobs([[-0.1, None, -0.3], [-0.4, -0.5]], old, ids)   # vLLM's, NaN where unscored
    assert vllm[0][0] == -0.1 and math.isnan(vllm[0][1]) and vllm[1] == [-0.4, -0.5]
    assert trainer._behaviour_logprobs(None, old, ids) == [[-1.0, -2.0, -3.0], [-4.0, -5.0]]
    assert trainer._behaviour_logprobs(None, {}, ids) is None          # on-policy: weight 1
    trainer.temperature = 0.7
    with pytest.warns(UserWarning, match="temperature"):
        assert trainer._behaviour_logprobs([[-0.1, -0.2, -0.3]], old, ids) is None


def test_grpo_weight_blends_trls_own_grpo_loss(tool_tokenizer, tmp_path, monkeypatch):
    trainer = _trainer(tool_tokenizer, tmp_path, seed=3, grpo_weight=0.25)
    _perturb(trainer.model, 1)
    fixed = _fixed_rollouts(trainer)
    seen = []

    def trl_grpo(model, inputs):   # stands in for GRPOTrainer._compute_loss (its own tests cover it)
        seen.append(inputs)
        return torch.tensor(2.0, requires_grad=True)

    monkeypatch.setattr(trainer, "_compute_loss", trl_grpo)
    total = float(_trl_side(trainer, fixed, NOTES))
    distill, value = trainer.hero_distill_loss(trainer.model, [0, 1])
    assert len(seen) == 1 and "hero_index" in seen[0]
    assert total == pytest.approx(0.75 * value + 0.25 * 2.0, abs=1e-6) and value > 0
