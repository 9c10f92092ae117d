"""Trainer: HERO learning signal, resume without lost/duplicated episodes, end-to-end runs per method.

Uses a tiny random Llama over the SmolLM2 tokenizer (``tiny_model``); the slow test uses SmolLM2-135M.
"""
import copy
import json

import pytest
import torch

import hero_gym
from hero_gym.agents.models import load_default_tokenizer, tiny_model
from hero_gym.agents.policy import HFPolicy
from hero_gym.agents.reflector import FunctionReflector, TurnReflection
from hero_gym.agents.scoring import student_logits
from hero_gym.agents.methods import build_notes
from hero_gym.agents.teachers import hero_note
from hero_gym.agents.trainer import EvalResult, TrainConfig, evaluate, train, update
from hero_gym.chat import ChatRenderer
from hero_gym.records import Episode, Turn, load_jsonl

LOOKUP = "hero_gym/Lookup-v0"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models are dominated by small ops: one intra-op thread is faster, and far faster on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok():
    return load_default_tokenizer()


# --------------------------------------------------------------------------- learning signal

def _token_logprobs(model, ctx, act):
    ep = Episode(env_id="x", initial_observation="", turns=[
        Turn(index=0, action_text="", observation="", context_token_ids=ctx, action_token_ids=act)])
    with torch.no_grad():
        logits, lay = student_logits(model, [ep])
    return torch.log_softmax(logits.float(), -1).gather(-1, lay.action_ids[:, None]).squeeze(-1)


def _seq_logprob(model, ctx, act):
    return _token_logprobs(model, ctx, act).sum().item()


@pytest.fixture(scope="module")
def note_reader(tok, fit_reader):
    """A tiny model briefly taught to follow HERO notes on one Lookup task (a stand-in for an instruction-
    tuned model): with a note naming action X it emits X; with no note it is split between A and B."""
    torch.manual_seed(0)
    env = hero_gym.make(LOOKUP)
    obs, info = env.reset(seed=0, options={"task_index": 0})
    r = ChatRenderer(tok)
    ctx = r.prompt_ids([{"role": "system", "content": info["system_prompt"]}, {"role": "user", "content": obs}])
    item = obs.split()[-1].rstrip("?")
    calls = {"A": {"name": "lookup", "arguments": {"key": item}}, "B": {"name": "answer", "arguments": {"code": "999"}}}
    acts = {k: r.encode("<tool_call>" + json.dumps(c) + "</tool_call>") + [r.end_of_turn_id] for k, c in calls.items()}
    refl = {k: TurnReflection(f"The right action here is {c['name']}.", "high", c) for k, c in calls.items()}
    notes = {k: r.note_ids(ctx, hero_note(v)) for k, v in refl.items()}
    data = [(ctx, acts["A"]), (ctx, acts["B"]), (notes["A"], acts["A"]), (notes["B"], acts["B"])]
    model = fit_reader(data, steps=45)
    assert _seq_logprob(model, notes["A"], acts["A"]) > _seq_logprob(model, notes["B"], acts["A"]) + 2.0
    return {"model": model, "ctx": ctx, "acts": acts, "refl": refl, "env": env, "renderer": r}


def _hero_updates(tok, nr, named: str, n_updates=2):
    # Two updates: with the live teacher at lr 3e-3 the 45-step note reader itself drifts after ~3 updates
    # (its note-reading degrades whatever the note's wording), so the test reads the first steps' direction.
    model = copy.deepcopy(nr["model"])
    policy = HFPolicy(model, tok, lora=None)
    env, ctx = nr["env"], nr["ctx"]
    episodes = []
    for k in ("A", "B"):     # the student tried both actions (as sampled rollouts would)
        env.reset(seed=0, options={"task_index": 0})
        text = tok.decode(nr["acts"][k][:-1])
        obs, rew, term, trunc, info = env.step(text)
        lp = _token_logprobs(model, ctx, nr["acts"][k]).tolist()
        episodes.append(Episode(env_id=LOOKUP, task_id="lookup-0", initial_observation="", turns=[Turn(
            index=0, action_text=text, parsed_action=info["parsed_action"], observation=obs, reward=rew,
            terminated=term, context_token_ids=ctx, action_token_ids=nr["acts"][k], action_logprobs=lp)]))
    reflector = FunctionReflector(lambda ep: {0: nr["refl"][named]})
    cfg = TrainConfig(method="hero", lr=3e-3, is_clip=None, teacher="live", loss="forward_kl", topk=None)
    opt = torch.optim.Adam(policy.trainable_parameters(), lr=cfg.lr)
    before = _seq_logprob(model, ctx, nr["acts"]["A"])
    for _ in range(n_updates):
        notes = build_notes("hero", episodes, reflections=reflector.reflect(episodes))
        stats = update(policy, opt, episodes, notes, cfg, teacher=None)
        assert stats.scored_turns == 2 and stats.distill_tokens > 0
    return before, _seq_logprob(model, ctx, nr["acts"]["A"])


def test_hero_diagnosis_naming_right_action_raises_its_probability(tok, note_reader):
    before, after = _hero_updates(tok, note_reader, "A")
    assert after > before + 0.1, (before, after)


def test_hero_diagnosis_naming_wrong_action_lowers_it(tok, note_reader):
    before, after = _hero_updates(tok, note_reader, "B")
    assert after < before - 0.1, (before, after)


# --------------------------------------------------------------------------- resume

def _cfg(tmp, **kw):
    base = dict(method="hero_rules", env_id=LOOKUP, turn_budget=12, tasks_per_update=2, group_size=1, max_turns=2,
                max_new_tokens=8, lr=1e-3, checkpoint_dir=str(tmp), seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _episode_keys(path):
    return [(e.task_id, e.metadata["train_iteration"], tuple(tuple(t.action_token_ids) for t in e.turns))
            for e in load_jsonl(path)]


def test_resume_after_kill_no_lost_or_duplicated_episodes(tok, tmp_path):
    full = train(HFPolicy(tiny_model(tok, seed=1), tok), _cfg(tmp_path / "full"))
    assert full.updates >= 3 and full.turns_used >= 12

    run = tmp_path / "killed"
    torch.manual_seed(123)   # the LoRA init is re-drawn from the config's seed: the global RNG does not matter
    first = train(HFPolicy(tiny_model(tok, seed=1), tok), _cfg(run, max_updates=2))
    assert first.updates == 2
    # the process "dies" mid-iteration: one more episode was appended and a line torn
    with open(run / "episodes.jsonl", "a") as f:
        f.write(Episode(env_id=LOOKUP, initial_observation="uncommitted").model_dump_json() + "\n")
        f.write('{"schema_version": 1, "episode_id": "tor')
    # a fresh process: new model object (different random LoRA init), resumes from the checkpoint
    torch.manual_seed(999)
    resumed = train(HFPolicy(tiny_model(tok, seed=1), tok), _cfg(run))
    assert resumed.resumed_from_iteration == 2
    assert resumed.updates == full.updates and resumed.turns_used == full.turns_used
    assert resumed.episodes == full.episodes == len(load_jsonl(run / "episodes.jsonl"))
    keys_full, keys_run = _episode_keys(tmp_path / "full" / "episodes.jsonl"), _episode_keys(run / "episodes.jsonl")
    assert len(set(e.episode_id for e in load_jsonl(run / "episodes.jsonl"))) == resumed.episodes
    assert keys_run == keys_full       # same episodes, same order, nothing lost or repeated
    assert [m["iteration"] for m in resumed.metrics] == list(range(1, full.updates + 1))


# --------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("method", ["hero_rules", "hero", "hero_shuffled", "grpo", "envfb_sd", "full_demo",
                                    "hero_rules_oracle"])
def test_train_then_evaluate_each_method(tok, tmp_path, method):
    policy = HFPolicy(tiny_model(tok, seed=2), tok)
    cfg = TrainConfig(method=method, env_id=LOOKUP, env_kwargs={"num_items": 4}, turn_budget=8, tasks_per_update=2,
                      group_size=2, max_turns=2, max_new_tokens=10, lr=1e-3, checkpoint_dir=str(tmp_path),
                      grpo_weight=0.5 if method == "envfb_sd" else 0.0, kl_coef=0.05 if method == "grpo" else 0.0,
                      teacher={"envfb_sd": "base", "full_demo": "live"}.get(method, "ema"),
                      reflector_max_new_tokens=24, reflector_retries=0)
    res = train(policy, cfg)
    assert res.updates >= 1 and res.turns_used >= 8
    assert (tmp_path / "checkpoint.pt").exists() and len(load_jsonl(tmp_path / "episodes.jsonl")) == res.episodes
    m = res.metrics[-1]
    assert m["action_tokens"] > 0
    if method == "envfb_sd":
        assert m["scored_turns"] > 0 and m["distill_loss"] is not None
    ev = evaluate(policy, LOOKUP, {"num_items": 4}, task_indices=[0, 1], max_turns=2, max_new_tokens=10)
    assert isinstance(ev, EvalResult) and len(ev.episodes) == 2
    assert 0.0 <= ev.success_rate <= 1.0 and 1.0 <= ev.mean_turns <= 2.0


class RecordingRollout:
    """A stand-in rollout backend (the vLLM role) that delegates generation and records adapters."""

    def __init__(self, inner):
        self.inner, self.tokenizer, self.adapters, self.calls = inner, inner.tokenizer, [], 0

    def generate(self, *args, **kwargs):
        self.calls += 1
        return self.inner.generate(*args, **kwargs)

    def set_lora(self, path):
        from pathlib import Path

        assert (Path(path) / "adapter_config.json").exists()   # a real PEFT adapter was saved first
        self.adapters.append(Path(path))


def test_rollout_policy_generates_and_gets_the_adapter_after_every_update(tok, tmp_path):
    policy = HFPolicy(tiny_model(tok, seed=3), tok)
    rollout = RecordingRollout(policy)
    cfg = TrainConfig(method="grpo", env_id=LOOKUP, env_kwargs={"num_items": 4}, turn_budget=8, tasks_per_update=1,
                      group_size=2, max_turns=2, max_new_tokens=6, checkpoint_dir=str(tmp_path))
    res = train(policy, cfg, rollout_policy=rollout)
    assert rollout.calls >= res.updates >= 2
    assert len(rollout.adapters) == res.optimizer_steps + 1     # at the start, then after every step
    assert rollout.adapters[-1] == tmp_path / "rollout_adapter"


def test_config_validation():
    with pytest.raises(ValueError):
        TrainConfig(method="ppo")
    with pytest.raises(ValueError):
        TrainConfig(grpo_weight=2.0)
    with pytest.raises(ValueError, match="turn_budget"):
        TrainConfig(turn_budget=-1)
    with pytest.raises(ValueError, match="privileged"):
        TrainConfig(method="hero_rules_oracle", env_pool="subprocess")
    with pytest.raises(ValueError, match="privileged"):
        TrainConfig(method="hero_rules_oracle", reflector="model")


def _lookup_call(name, **args):
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def _scripted_episode(env, task, actions):
    """An episode of ``actions`` on ``env`` with each step's info kept on its turn, as ``collect`` records it."""
    obs, info = env.reset(seed=task, options={"task_index": task})
    ep = Episode(env_id=LOOKUP, task_id=info["task_id"], initial_observation=obs, episode_id=f"s{task}")
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        ep.turns.append(Turn(index=len(ep.turns), action_text=a, observation=obs, reward=r, terminated=term,
                             truncated=trunc, parsed_action=info.get("parsed_action"),
                             action_error=info.get("action_error"), info=json.loads(json.dumps(info, default=str))))
        if term or trunc:
            ep.success = bool(info.get("success"))
            break
    return ep


def test_the_ceiling_targets_the_oracle_action_recorded_in_the_state_the_student_reached(tmp_path):
    """hero_rules_oracle: the training envs record the env's oracle action before every step and the rule
    reflector makes it the target of every turn judged an error. Controls: a tampered recording changes the
    target (it is read from the recording, not recomputed), hero_rules on the same episodes has no
    oracle-given target, and episodes not recorded at all are refused."""
    from hero_gym.agents.oracle import OracleRecorder
    from hero_gym.agents.trainer import _make_envs, make_reflector

    cfg = _small(tmp_path, method="hero_rules_oracle", tasks_per_update=1, group_size=1, max_turns=4)
    (env,) = _make_envs(cfg)
    assert isinstance(env, OracleRecorder)
    code = env.unwrapped.table
    wrong = _lookup_call("lookup", key="zzz")
    # a bad key twice (the repeat is redundant), then a wrong answer (a failed ending): two errors
    ep = _scripted_episode(env, 0, [wrong, wrong, _lookup_call("answer", code="000")])
    env.close()
    item = ep.initial_observation.removeprefix("What is the code for ").rstrip("?")
    assert [t.info["oracle_action"] for t in ep.turns] == [f'<tool_call>\n{{"name": "lookup", "arguments": '
                                                           f'{{"key": "{item}"}}}}\n</tool_call>'] * 3
    refl = make_reflector(cfg.spec, None, cfg).reflect([ep])[0]
    assert sorted(t for t, x in refl.turns.items() if x.verdict == "error") == [1, 2]
    assert all(x.target_source == "given" and f'"{item}"' in x.target_text for x in refl.turns.values())
    notes = build_notes("hero_rules_oracle", [ep], reflections=[refl])[0]
    assert notes[0] is None and all(f'"key": "{item}"' in n for n in notes[1:])
    tampered = ep.model_copy(deep=True)
    tampered.turns[2].info["oracle_action"] = _lookup_call("answer", code=code[item])
    t_notes = build_notes("hero_rules_oracle", [tampered], reflections=make_reflector(cfg.spec, None, cfg)
                          .reflect([tampered]))[0]
    assert f'"code": "{code[item]}"' in t_notes[2] and t_notes[1] == notes[1]
    rules = make_reflector(TrainConfig(method="hero_rules").spec, None, cfg).reflect([ep])[0]
    assert all(x.target_source != "given" for x in rules.turns.values())
    bare = ep.model_copy(deep=True)
    for turn in bare.turns:
        turn.info.pop("oracle_action")
    with pytest.raises(ValueError, match="OracleRecorder"):
        make_reflector(cfg.spec, None, cfg).reflect([bare])


# --------------------------------------------------------------------------- slow: the real model

@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["hero_gym/TauRetail-v0", "hero_gym/WebShop-v0"])
@pytest.mark.parametrize("method", ["hero_rules", "grpo", "envfb_sd", "full_demo"])
def test_smollm2_train_and_evaluate(tmp_path, env_id, method):
    from hero_gym.agents.models import load_default_model

    if env_id not in hero_gym.list_envs():
        pytest.skip(f"{env_id} not registered")
    model, tokenizer = load_default_model()
    policy = HFPolicy(model, tokenizer)
    cfg = TrainConfig(method=method, env_id=env_id, turn_budget=8, tasks_per_update=1, group_size=2, max_turns=4,
                      max_new_tokens=64, lr=1e-5, checkpoint_dir=str(tmp_path), task_indices=[0],
                      micro_batch_episodes=1)
    res = train(policy, cfg)
    assert res.updates >= 1 and res.turns_used >= 8
    ev = evaluate(policy, env_id, task_indices=[0], max_turns=3, max_new_tokens=64)
    assert len(ev.episodes) == 1 and ev.mean_turns >= 1


# --------------------------------------------------------------------------- budget, counters, snapshots

def _small(tmp, **kw):
    base = dict(method="grpo", env_id=LOOKUP, env_kwargs={"num_items": 4}, turn_budget=7, tasks_per_update=1,
                group_size=2, max_turns=2, max_new_tokens=6, lr=1e-3, checkpoint_dir=str(tmp), seed=5)
    base.update(kw)
    return TrainConfig(**base)


def test_budget_counts_whole_batches_no_episode_cut(tok, tmp_path):
    """Item 2: the budget used to close running episodes (stop_reason "budget"), trained on as failures."""
    res = train(HFPolicy(tiny_model(tok, seed=4), tok), _small(tmp_path, method="hero_rules"))
    eps = load_jsonl(tmp_path / "episodes.jsonl")
    assert res.turns_used >= 7 and sum(len(e.turns) for e in eps) == res.turns_used
    assert all(e.metadata["stop_reason"] in ("terminated", "truncated") for e in eps)
    before_last = res.metrics[-2]["turns_used"] if len(res.metrics) > 1 else 0
    assert before_last < 7        # the last batch started while budget was left


def _ep_with(tok_ids, reward, *, terminated, task="t", stop_reason=None):
    stop_reason = stop_reason or ("terminated" if terminated else "truncated")
    turn = Turn(index=0, action_text="", observation="", context_token_ids=tok_ids[:-3], action_token_ids=tok_ids[-3:],
                action_logprobs=[-1.0] * 3, terminated=terminated, truncated=not terminated, reward=reward)
    return Episode(env_id=LOOKUP, task_id=task, initial_observation="", turns=[turn], total_reward=reward,
                   success=terminated and reward > 0,
                   metadata={"cut_short": stop_reason not in ("terminated", "truncated"), "stop_reason": stop_reason})


def test_grpo_scores_env_truncated_episodes_and_leaves_out_only_outside_cuts(tok):
    """An episode the env's turn cap truncated keeps its env reward in GRPO (a group with one
    success and one capped episode used to get zero advantage); only budget / context / env-error cuts are
    left out. A batch without signal takes no optimizer step."""
    from hero_gym.agents.trainer import episode_finished

    policy = HFPolicy(tiny_model(tok, seed=6), tok)
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    ids = list(range(100, 112))
    cfg = TrainConfig(method="grpo")
    capped = [_ep_with(ids, 1.0, terminated=True), _ep_with(ids, 0.0, terminated=False)]
    assert [episode_finished(e) for e in capped] == [True, True]
    stats = update(policy, opt, capped, None, cfg)   # success vs. a capped failure: a real comparison
    assert stats.stepped and stats.grpo_tokens == 6 and stats.tokens_trained == 6
    for reason in ("context_overflow", "env_error", "budget"):
        cut = [_ep_with(ids, 1.0, terminated=True), _ep_with(ids, 0.0, terminated=False, stop_reason=reason)]
        assert not episode_finished(cut[1])
        stats = update(policy, opt, cut, None, cfg)   # the cut one is not a failure: nothing to compare
        assert not stats.stepped and stats.tokens_trained == 0, reason
    equal = [_ep_with(ids, 0.0, terminated=True), _ep_with(ids, 0.0, terminated=True)]
    assert not update(policy, opt, equal, None, cfg).stepped


def test_snapshots_for_nested_budgets(tok, tmp_path):
    from hero_gym.agents.checkpoint import list_snapshots, load_snapshot, snapshot_for_budget

    policy = HFPolicy(tiny_model(tok, seed=7), tok)
    res = train(policy, _small(tmp_path, method="envfb_sd", turn_budget=8))
    snaps = list_snapshots(tmp_path)
    # one snapshot per iteration (the model at budget B is the first snapshot at or past B)
    assert 0 in snaps and len(snaps) == res.iterations + 1 >= 2
    assert sorted(snaps) == [0, *(m["turns_used"] for m in res.metrics)]
    last = max(snaps)
    assert last == res.turns_used
    meta = json.loads((snaps[last] / "snapshot.json").read_text())
    assert meta == {"turns": last, "episodes": res.episodes, "optimizer_steps": res.optimizer_steps,
                    "tokens_trained": res.tokens_trained}
    fresh = HFPolicy(tiny_model(tok, seed=7), tok)
    trained = {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}
    load_snapshot(fresh, snaps[last])
    for n, p in fresh.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, trained[n])
    assert snapshot_for_budget(tmp_path, last - 1) == snaps[min(t for t in snaps if t >= last - 1)]
    assert snapshot_for_budget(tmp_path, 8) == snaps[last]      # the batch that crossed the budget is in it
    load_snapshot(fresh, snaps[0])      # budget 0 = the starting weights: a fresh LoRA (B = 0) is the base
    assert all(float(p.detach().abs().sum()) == 0 for n, p in fresh.model.named_parameters() if "lora_B" in n)


def test_a_step_free_iteration_snapshots_a_pointer_to_the_previous_weights(tok, tmp_path):
    from hero_gym.agents.checkpoint import list_snapshots, load_snapshot

    policy = HFPolicy(tiny_model(tok, seed=7), tok)
    res = train(policy, _small(tmp_path, method="grpo", turn_budget=6))   # a random model never succeeds
    assert res.optimizer_steps == 0 and res.iterations >= 2
    snaps = list_snapshots(tmp_path)
    assert all(json.loads((p / "snapshot.json").read_text())["weights_of"] for t, p in snaps.items() if t)
    fresh = HFPolicy(tiny_model(tok, seed=7), tok)
    load_snapshot(fresh, snaps[max(snaps)])    # follows the pointers to the starting weights
    assert all(float(p.detach().abs().sum()) == 0 for n, p in fresh.model.named_parameters() if "lora_B" in n)


def test_full_demo_falls_back_to_the_expert_demonstration_of_the_same_task(tok, tmp_path):
    """With no successful rollout in the batch, full-demo had no note and took no step (the
    committed cpu row: 0 optimizer steps). The env expert's demonstration of the same training task now
    teaches; the metrics count how often. Control: without the fallback, no note and no step."""
    kw = dict(method="full_demo", turn_budget=6, group_size=2, max_turns=2, teacher="live")
    res = train(HFPolicy(tiny_model(tok, seed=9), tok), _small(tmp_path / "on", **kw))
    assert res.optimizer_steps >= 1 and res.train_success_rate == 0
    assert all(m["demo_notes"] == m["demo_from_expert"] == m["episodes"] - (res.metrics[i - 1]["episodes"] if i else 0)
               for i, m in enumerate(res.metrics))
    off = train(HFPolicy(tiny_model(tok, seed=9), tok), _small(tmp_path / "off", demo_fallback=False, **kw))
    assert off.optimizer_steps == 0 and all(m["demo_notes"] == 0 for m in off.metrics)


def test_lora_init_is_seeded_per_cell(tok, tmp_path):
    """Item 7: a cell built after other RNG use gets the same LoRA init as the same cell alone."""
    def init_after(global_seed, cell_seed):
        torch.manual_seed(global_seed)
        policy = HFPolicy(tiny_model(tok, seed=8), tok)
        train(policy, _small(tmp_path / f"{global_seed}-{cell_seed}", seed=cell_seed, max_updates=0))
        return {n: p.detach().clone() for n, p in policy.model.named_parameters() if "lora_A" in n}

    a, b, c = init_after(1, 3), init_after(2, 3), init_after(1, 4)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_rollout_backend_gets_the_resumed_adapter_before_sampling(tok, tmp_path):
    """Item 9: after a resume the rollout engine used to sample from the base until the first update."""
    train(HFPolicy(tiny_model(tok, seed=3), tok), _small(tmp_path, max_updates=1))
    events = []

    class Backend(RecordingRollout):
        def generate(self, *a, **kw):
            events.append("generate")
            return super().generate(*a, **kw)

        def set_lora(self, path):
            events.append("set_lora")
            super().set_lora(path)

    policy = HFPolicy(tiny_model(tok, seed=3), tok)
    train(policy, _small(tmp_path, max_updates=2), rollout_policy=Backend(policy))
    assert events[0] == "set_lora"


def test_eval_result_repr_is_short(tok):
    policy = HFPolicy(tiny_model(tok, seed=2), tok)
    ev = evaluate(policy, LOOKUP, {"num_items": 4}, task_indices=[0], max_turns=1, max_new_tokens=4)
    assert len(repr(ev)) < 200 and "n_episodes=1" in repr(ev) and "token" not in repr(ev)
