"""Warm start by behaviour cloning (agents/warmstart.py) on the tiny random model."""

from __future__ import annotations

import types

import pytest

import hero_gym
from hero_gym.agents.policy import Generation, HFPolicy
from hero_gym.agents.rollout import Task, collect
from hero_gym.agents.warmstart import (
    ExpertPolicy,
    WarmStartConfig,
    build_examples,
    cache_key,
    evaluate_valid,
    load_warm_started,
    make_expert,
    read_report,
    recovery_examples,
    warm_start,
)
from hero_gym.chat import ChatRenderer

SMALL = {"max_results": 2, "instruction_once": True}


def _train_tasks(n):
    return [Task(seed=i, options={"split": "train", "task_index": i}) for i in range(n)]


def test_expert_demonstrations_are_token_exact(smol_tokenizer):
    env = hero_gym.make("hero_gym/WebShop-v0", **SMALL)
    pol = ExpertPolicy(env, smol_tokenizer)
    eps = collect(pol, env, tasks=_train_tasks(4))
    eot = ChatRenderer(smol_tokenizer).end_of_turn_id
    assert len(eps) == 4 and sum(e.success for e in eps) >= 2
    for ep in eps:
        assert ep.turns[0].action_text.startswith("search[")
        for t in ep.turns:
            assert t.action_error is None
            assert t.action_token_ids[-1] == eot
            assert smol_tokenizer.decode(t.action_token_ids[:-1]) == t.action_text
    examples = build_examples(eps, smol_tokenizer, pol.noisy)
    assert len(examples) == 4
    for ep, ex in zip(eps, examples):
        assert sum(ex.loss_mask) == sum(len(t.action_token_ids) for t in ep.turns)   # action tokens only
        last = ep.turns[-1]
        assert ex.input_ids == last.context_token_ids + last.action_token_ids


def test_noisy_actions_get_no_loss_and_the_expert_recovers(smol_tokenizer):
    env = hero_gym.make("hero_gym/WebShop-v0", max_turns=10, **SMALL)
    pol = ExpertPolicy(env, smol_tokenizer, noise=0.4, seed=3)
    eps = collect(pol, env, tasks=_train_tasks(6))
    turns = [t for e in eps for t in e.turns]
    assert len(pol.noisy) == len(turns) and 0 < sum(pol.noisy) < len(turns)
    assert any(t.action_error for t, n in zip(turns, pol.noisy) if n)   # some noise is an invalid action
    assert not any(t.action_error for t, n in zip(turns, pol.noisy) if not n)  # the expert never errs
    examples = build_examples(eps, smol_tokenizer, pol.noisy)
    clean_tokens = sum(len(t.action_token_ids) for t, n in zip(turns, pol.noisy) if not n)
    assert sum(sum(ex.loss_mask) for ex in examples) == clean_tokens
    with pytest.raises(ValueError):
        build_examples(eps, smol_tokenizer, pol.noisy[:-1])


class _Always:
    """A scripted 'model' that always replies the same text (token ids closed by <|im_end|>)."""

    def __init__(self, tokenizer, text):
        self.tokenizer, self.text = tokenizer, text
        self.renderer = ChatRenderer(tokenizer)

    def generate(self, contexts, sampling=None, *, max_new_tokens=None):
        ids = self.renderer.encode(self.text) + [self.renderer.end_of_turn_id]
        return [Generation(ids, [0.0] * len(ids), self.text, "stop") for _ in contexts]


def test_recovery_labels_the_states_a_wrong_policy_visits(smol_tokenizer):
    kwargs = {"max_turns": 3, **SMALL}
    eps = collect(_Always(smol_tokenizer, "click[buy now]"), "hero_gym/WebShop-v0", tasks=_train_tasks(2),
                  env_kwargs=kwargs, num_envs=2)
    env = hero_gym.make("hero_gym/WebShop-v0", **kwargs)
    examples, stats = recovery_examples(eps, env, smol_tokenizer)
    assert stats == {"turns": 6, "labelled": 6, "disagreements": 6, "diverged": 0}
    for ex, t in zip(examples, [t for e in eps for t in e.turns]):
        n = len(t.context_token_ids)
        assert ex.input_ids[:n] == t.context_token_ids and not any(ex.loss_mask[:n])
        target = smol_tokenizer.decode(ex.input_ids[n:-1])
        assert target.startswith("search[") and all(ex.loss_mask[n:])   # the expert's action, every token
    # a policy that agrees with the expert gets no labels
    good = collect(ExpertPolicy(env, smol_tokenizer), env, tasks=_train_tasks(2))
    assert recovery_examples(good, env, smol_tokenizer)[0] == []


def test_config_validation_and_cache_key():
    with pytest.raises(ValueError):
        WarmStartConfig(noise=1.0)
    with pytest.raises(ValueError):
        WarmStartConfig(tool_prompt="long")
    a = WarmStartConfig(episodes=10)
    assert cache_key(a) == cache_key(WarmStartConfig(episodes=10, progress=True))
    assert cache_key(a) != cache_key(WarmStartConfig(episodes=11))
    assert cache_key(a) != cache_key(a, base="tiny")
    assert cache_key(a, base="smollm2") == cache_key(a, base="default")   # one name for the embedded model
    assert cache_key(a) != cache_key(WarmStartConfig(episodes=10, env_kwargs={"max_results": 5}))
    assert cache_key(WarmStartConfig(noise=0, lr=1)) == cache_key(WarmStartConfig(noise=0.0, lr=1.0))
    with pytest.raises(ValueError):
        WarmStartConfig(episodes=2.5)


def test_unsupported_env_is_a_clear_error():
    with pytest.raises(ValueError, match="no warm-start expert"):
        make_expert(types.SimpleNamespace(unwrapped=object()))


def test_lookup_solver_demonstrations(smol_tokenizer):
    env = hero_gym.make("hero_gym/Lookup-v0", num_items=3)
    pol = ExpertPolicy(env, smol_tokenizer)
    eps = collect(pol, env, tasks=[Task(seed=i, options={"task_index": i}) for i in range(3)])
    assert all(e.success and len(e.turns) == 2 for e in eps)
    assert [t.parsed_action["name"] for t in eps[0].turns] == ["lookup", "answer"]
    assert len(build_examples(eps, smol_tokenizer, pol.noisy)) == 3


def test_warm_start_improves_valid_actions_over_the_same_model_and_is_cached(tmp_path, monkeypatch):
    """Tiny random model (full fine-tuning: a 64-wide LoRA learns too slowly for a fast test)."""
    import time

    from typer.testing import CliRunner

    from hero_gym.agents.models import load_named_model
    from hero_gym.cli import app

    monkeypatch.setenv("HERO_GYM_CACHE", str(tmp_path))
    cfg = WarmStartConfig(env_kwargs=SMALL, episodes=16, epochs=4, lr=3e-3, lora_r=0, noise=0.0,
                          recovery_rounds=0, eval_goals=4, eval_max_turns=2, max_new_tokens=48)
    model, tok = load_named_model("tiny", device="cpu")
    control = evaluate_valid(HFPolicy(model, tok, lora=None, device="cpu"), cfg)

    path = warm_start(cfg, base="tiny", device="cpu")
    assert path.parent == tmp_path / "warmstart" and path.name == cache_key(cfg, "tiny")
    report = read_report(path)
    warm = report["eval"]
    assert warm["episodes"] == control["episodes"] == 4
    assert warm["valid_action_rate"] >= control["valid_action_rate"] + 0.1, (control, warm)
    assert report["clone"]["passes"][-1]["loss"] < report["clone"]["passes"][0]["loss"]

    t0 = time.perf_counter()
    assert warm_start(cfg, base="tiny") == path                  # cached: no training
    assert time.perf_counter() - t0 < 5
    merged, _ = load_warm_started(cfg, base="tiny", device="cpu")   # a plain from_pretrained model
    assert not hasattr(merged, "peft_config")
    res = CliRunner().invoke(app, ["warmstart", "hero_gym/WebShop-v0", "--model", "tiny", "--device", "cpu",
                                   "-k", "max_results=2", "-k", "instruction_once=true",
                                   "-c", "episodes=16", "-c", "epochs=4", "-c", "lr=0.003", "-c", "lora_r=0",
                                   "-c", "noise=0", "-c", "recovery_rounds=0", "-c", "eval_goals=4",
                                   "-c", "eval_max_turns=2", "-c", "max_new_tokens=48"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert str(path) in res.output.replace("\n", "") and "valid_action_rate" in res.output


# ---------------------------------------------------------------- Tau-bench (the gold-action expert)
TAU = "hero_gym/TauRetail-v0"
GENERATED = {"data": "generated"}     # not the official data even when $HERO_GYM_TAUBENCH_DIR is set


def test_tau_expert_demonstrations_are_token_exact_on_the_train_split(smol_tokenizer):
    from hero_gym.agents.policy import SamplingConfig
    from hero_gym.agents.warmstart import _tasks

    env = hero_gym.make(TAU, **GENERATED)
    tasks = _tasks(env, "train", 3, seed=0, shuffle=True)
    assert all(t.options["split"] == "train" for t in tasks)
    pol = ExpertPolicy(env, smol_tokenizer)
    eps = collect(pol, env, tasks=tasks, sampling=SamplingConfig(max_new_tokens=512))
    assert all(e.success for e in eps) and pol.truncated == 0
    train_ids = {t.task_id for t in env.unwrapped.tasks("train")}
    assert all(e.task_id in train_ids for e in eps)
    eot = ChatRenderer(smol_tokenizer).end_of_turn_id
    for ep in eps:
        assert ep.turns[0].parsed_action == {
            "message": "To get started, could you please give me your email address, or your name and zip code?"}
        assert any(t.action_text.startswith("<tool_call>") and t.parsed_action.get("name") for t in ep.turns)
        for t in ep.turns:
            assert t.action_error is None and t.action_token_ids[-1] == eot
            assert smol_tokenizer.decode(t.action_token_ids[:-1]) == t.action_text
    examples = build_examples(eps, smol_tokenizer, pol.noisy)
    for ep, ex in zip(eps, examples, strict=True):
        targets = [i for i, m in zip(ex.input_ids, ex.loss_mask) if m]
        assert targets == [i for t in ep.turns for i in t.action_token_ids]   # the loss is on action tokens only


def test_tau_noisy_demonstrations(smol_tokenizer):
    env = hero_gym.make(TAU, **GENERATED)
    pol = ExpertPolicy(env, smol_tokenizer, noise=0.3, seed=0)
    eps = collect(pol, env, tasks=[Task(seed=i, options={"split": "train", "task_index": i}) for i in range(3)])
    turns = [t for e in eps for t in e.turns]
    assert 0 < sum(pol.noisy) < len(turns)
    expert = make_expert(env)
    assert type(expert).__name__ == "GoldExpert"
    examples = build_examples(eps, smol_tokenizer, pol.noisy)
    assert sum(sum(ex.loss_mask) for ex in examples) == sum(
        len(t.action_token_ids) for t, n in zip(turns, pol.noisy) if not n)


def test_splits_are_read_from_the_env():
    from hero_gym.agents.warmstart import _split_of

    tau = hero_gym.make(TAU, **GENERATED).unwrapped
    assert _split_of(tau, "train") == "train" and _split_of(tau, "test") == "test"
    with pytest.raises(ValueError, match="no 'dev' split"):
        _split_of(tau, "dev")
    assert _split_of(hero_gym.make("hero_gym/Lookup-v0").unwrapped, "train") is None   # no splits: its task list
    assert _split_of(hero_gym.make("hero_gym/WebShop-v0", **SMALL).unwrapped, "test") == "test"


def test_tau_warm_start_builds_and_caches_a_model(tmp_path, monkeypatch):
    import hero_gym.agents.trainer as trainer

    monkeypatch.setenv("HERO_GYM_CACHE", str(tmp_path))
    evaluated = []
    real_evaluate = trainer.evaluate

    def spy(policy, env_id, env_kwargs, **kw):
        evaluated.append(dict(env_kwargs))
        return real_evaluate(policy, env_id, env_kwargs, **kw)

    monkeypatch.setattr(trainer, "evaluate", spy)
    # short episodes and the compact tool prompt keep the contexts near 2k tokens (full Tau episodes reach 8k)
    cfg = WarmStartConfig(env_id=TAU, env_kwargs=GENERATED, episodes=2, demo_max_turns=4, recovery_rounds=1,
                          recovery_episodes=1, eval_goals=1, max_turns=4, eval_max_turns=1, max_new_tokens=128,
                          tool_prompt="compact", lora_r=0, noise=0.0)
    path = warm_start(cfg, base="tiny", device="cpu")
    assert path.name == cache_key(cfg, "tiny") and (path / "config.json").is_file()
    report = read_report(path)
    assert report["demos"]["episodes"] == 2 and report["demos"]["turns"] == 8
    assert report["demos"]["truncated_actions"] == 0 and report["demos"]["target_tokens"] > 0
    rec = report["recovery"][0]
    assert rec["episodes"] == 1 and rec["labelled"] >= 1          # the expert labelled the model's states
    ev = report["eval"]
    assert ev["episodes"] == 1 and 0.0 <= ev["valid_action_rate"] <= 1.0 and "success_rate" in ev
    assert evaluated == [{**GENERATED, "split": "test"}]         # held out: the test split
    assert warm_start(cfg, base="tiny") == path                   # cached


# ---------------------------------------------------------------- adapter, shipped adapters, resume
LOOKUP_CFG = dict(env_id="hero_gym/Lookup-v0", episodes=6, lr=1e-3, lora_r=4, lora_alpha=8, noise=0.2,
                  recovery_rounds=1, recovery_episodes=2, eval_goals=0, max_turns=2, max_new_tokens=24)


def _weights(path):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_the_adapter_is_kept_and_a_shipped_copy_rebuilds_the_same_merged_weights(tmp_path, monkeypatch):
    """The build keeps its float16 LoRA adapter; shipped under the same key, it is merged instead of
    training and gives the merged weights of the build bit for bit."""
    import hero_gym.agents.warmstart_build as build
    from hero_gym.agents import warmstart_files as files

    monkeypatch.setenv("HERO_GYM_CACHE", str(tmp_path / "a"))
    cfg = WarmStartConfig(**LOOKUP_CFG)
    built = warm_start(cfg, base="tiny", device="cpu")
    adapter = built / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert all(t.dtype.is_floating_point and t.dtype.itemsize == 2 for t in _weights(adapter).values())

    shipped_root = tmp_path / "shipped"
    dest = files.ship(built, root=shipped_root, command="hero-gym warmstart ...")
    assert dest.name == cache_key(cfg, "tiny") and read_report(dest)["rebuild_command"] == "hero-gym warmstart ..."
    monkeypatch.setattr(files, "SHIPPED_ROOT", shipped_root)
    monkeypatch.setenv("HERO_GYM_CACHE", str(tmp_path / "b"))          # a fresh cache: nothing built there
    monkeypatch.setattr(build, "_Build", None)                         # training would now fail
    again = warm_start(cfg, base="tiny", device="cpu")
    assert again != built and "shipped adapter" in read_report(again)["source"]
    a, b = _weights(built), _weights(again)
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)
    base = _weights_of_base()
    assert any(not torch_equal(a[k], base[k]) for k in a if k in base)   # the adapter changed something

    monkeypatch.setenv("HERO_GYM_WARMSTART_SHIPPED", "0")               # turned off: no shipped adapter
    assert files.shipped_adapter(dest.name) is None


def torch_equal(x, y):
    import torch

    return x.shape == y.shape and bool(torch.equal(x, y))


def _weights_of_base():
    from hero_gym.agents.models import load_named_model

    model, _ = load_named_model("tiny", device="cpu")
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The weights of an uninterrupted tiny Lookup build, and its progress lines."""
    import os

    old = os.environ.get("HERO_GYM_CACHE")
    os.environ["HERO_GYM_CACHE"] = str(tmp_path_factory.mktemp("whole"))
    try:
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            path = warm_start(WarmStartConfig(**LOOKUP_CFG, progress=True), base="tiny", device="cpu")
        return _weights(path), err.getvalue()
    finally:
        os.environ["HERO_GYM_CACHE"] = old


def test_the_build_logs_steps_of_a_total_with_an_eta(uninterrupted):
    log = uninterrupted[1]
    assert "warm start plan: 6 behaviour-cloning steps, then 1 DAgger round(s) of 2 rollouts" in log
    assert "behaviour cloning step 6/6 (100%)" in log and "s/step, ETA" in log
    assert "DAgger round 1 step" in log


@pytest.mark.parametrize("cut_at, phase, steps_kept", [(3, "clone0", 2), (8, "recovery0", 1)])
def test_an_interrupted_build_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys, uninterrupted,
                                                          cut_at, phase, steps_kept):
    """Ctrl-C between two steps (behaviour cloning, then the DAgger pass) keeps a checkpoint of the last
    step; the rerun resumes there (no new demonstrations) and ends with the weights of an uninterrupted
    build. Control: a build with another seed ends elsewhere."""
    import hero_gym.agents.warmstart as ws
    from hero_gym.agents import warmstart_files as files

    monkeypatch.setenv("HERO_GYM_CACHE", str(tmp_path / "cut"))
    cfg = WarmStartConfig(**LOOKUP_CFG, progress=True)
    real_loss, calls = ws.example_loss, []

    def loss_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == cut_at:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(ws, "example_loss", loss_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        warm_start(cfg, base="tiny", device="cpu")
    monkeypatch.setattr(ws, "example_loss", real_loss)
    assert f"step {steps_kept} kept in" in capsys.readouterr().err
    key = cache_key(cfg, "tiny")
    partial = tmp_path / "cut" / "warmstart" / f"{key}.partial"
    state = files.load_checkpoint(partial, key)
    assert state["current"]["phase"] == phase and state["current"]["steps"] == steps_kept
    assert files.load_checkpoint(partial, "another key") is None

    resumed = _weights(warm_start(cfg, base="tiny", device="cpu"))
    err = capsys.readouterr().err
    assert "resuming the interrupted build" in err and "expert demonstrations" not in err
    assert not partial.exists()
    whole = uninterrupted[0]
    assert whole.keys() == resumed.keys() and all(torch_equal(whole[k], resumed[k]) for k in whole)

    monkeypatch.setenv("HERO_GYM_CACHE", str(tmp_path / "other"))
    other = _weights(warm_start(WarmStartConfig(**{**LOOKUP_CFG, "seed": 1}), base="tiny", device="cpu"))
    assert any(not torch_equal(whole[k], other[k]) for k in whole)


def test_an_interrupt_inside_an_update_keeps_the_checkpoint_before_it(tmp_path, monkeypatch, uninterrupted):
    """An interrupt inside ``optimizer.step`` (a half-applied update) is not checkpointed: the periodic
    checkpoint of the step before stays, and the resumed build still matches."""
    import torch

    import hero_gym.agents.warmstart as ws
    from hero_gym.agents import warmstart_files as files

    monkeypatch.setenv("HERO_GYM_CACHE", str(tmp_path))
    monkeypatch.setattr(ws, "CHECKPOINT_SECONDS", 0.0)       # checkpoint after every step
    cfg = WarmStartConfig(**LOOKUP_CFG)
    real_step, calls = torch.optim.AdamW.step, []

    def step_then_interrupt(self, *a, **k):
        out = real_step(self, *a, **k)
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        warm_start(cfg, base="tiny", device="cpu")
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    key = cache_key(cfg, "tiny")
    state = files.load_checkpoint(tmp_path / "warmstart" / f"{key}.partial", key)
    assert state["current"]["steps"] == 3
    resumed = _weights(warm_start(cfg, base="tiny", device="cpu"))
    whole = uninterrupted[0]
    assert all(torch_equal(whole[k], resumed[k]) for k in whole)


def test_full_fine_tuning_of_a_half_precision_model_is_refused(monkeypatch, smol_tokenizer, tmp_path):
    """``lora_r=0`` on a bf16 base (CUDA's default dtype) would train without fp32 master weights: refused
    before any training, as the trainer refuses it. The control: a LoRA adapter on the same bf16 base (its
    weights are fp32) builds."""
    import torch

    import hero_gym.agents.warmstart_build as wb
    from hero_gym.agents.models import tiny_model

    def bf16_base(name, device=None, dtype=None):  # noqa: ANN001, ANN202
        return tiny_model(smol_tokenizer, seed=0, dtype=torch.bfloat16), smol_tokenizer

    monkeypatch.setattr(wb, "load_named_model", bf16_base)
    full = WarmStartConfig(env_id="hero_gym/Lookup-v0", episodes=1, recovery_rounds=0, eval_goals=0, lora_r=0)
    with pytest.raises(ValueError, match="fp32 master"):
        wb._Build(full, "tiny", "full", tmp_path / "full", "cpu", print)
    lora = WarmStartConfig(env_id="hero_gym/Lookup-v0", episodes=1, recovery_rounds=0, eval_goals=0, lora_r=4)
    build = wb._Build(lora, "tiny", "lora", tmp_path / "lora", "cpu", print)
    assert {p.dtype for p in build.policy.trainable_parameters()} == {torch.float32}
