"""Data-parallel training (agents/distributed.py): 2 gloo ranks on CPU, spawned with torch.multiprocessing.

* one ``update`` on 2 ranks (each with half the tasks) gives the parameters of one single-process ``update``
  on the whole batch;
* ``train`` on 2 ranks spends the turn budget once globally: every task runs on exactly one rank, the turn
  counter is the same on both and equals the turns logged (once, by rank 0).
* FSDP (``sharding="fsdp"``, FSDP2 on gloo): two updates with the EMA teacher (and gradient checkpointing)
  on 2 sharded ranks with 4 and 2 episodes give the parameters and the EMA of two single-process updates
  on the whole batch, as does one update with every episode on rank 0; bf16 mixed precision computes in
  bf16 on fp32 master weights; a checkpoint written by an FSDP run is whole and resumes in one process.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

import hero_gym
from hero_gym.agents import distributed as D
from hero_gym.agents.methods import NoteOptions
from hero_gym.agents.models import load_default_tokenizer, tiny_model
from hero_gym.agents.policy import HFPolicy
from hero_gym.agents.rollout import Task, collect
from hero_gym.agents.teachers import TeacherWeights
from hero_gym.agents.trainer import TrainConfig, _tasks_for, train, update

from test_rollout import OraclePolicy

ENV = "hero_gym/Lookup-v0"
UPDATE_CONFIG = dict(method="envfb_sd", grpo_weight=0.5, max_grad_norm=None, gradient_checkpointing=False,
                     teacher="live")


def _policy(seed: int = 0) -> HFPolicy:
    tok = load_default_tokenizer()
    torch.manual_seed(seed)                      # the LoRA init draws from the global RNG
    return HFPolicy(tiny_model(tok, seed=seed), tok, lora="default", device="cpu")


def _trainable(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.model.named_parameters() if p.requires_grad}


def _one_update(episodes, groups: int) -> tuple[dict[str, torch.Tensor], dict]:
    """One SGD update (no clipping: gradient scale errors would show) on this rank's share of ``groups``."""
    policy = _policy()
    config = TrainConfig(**UPDATE_CONFIG)
    size = len(episodes) // groups
    mine = [ep for g in D.shard([episodes[i * size:(i + 1) * size] for i in range(groups)]) for ep in g]
    notes = config.spec.notes(mine, None, None, NoteOptions())
    params = [p for p in policy.model.parameters() if p.requires_grad]
    stats = update(policy, torch.optim.SGD(params, lr=1000.0), mine, notes, config)
    return _trainable(policy), {"stepped": stats.stepped, "loss": stats.loss, "grad_norm": stats.grad_norm,
                                "tokens_trained": stats.tokens_trained, "local_episodes": len(mine)}


FSDP_UPDATE_CONFIG = dict(UPDATE_CONFIG, teacher="ema", ema_rate=0.5, gradient_checkpointing=True)


def _fsdp_updates(episodes, groups: int, sharded: bool, steps: int = 2,
                  mixed_precision: str | None = None) -> dict:
    """``steps`` SGD updates with the EMA teacher on this rank's share of ``groups``; the optimizer and the
    teacher are built on the unsharded model (as ``train`` does) and moved onto the shards by ``fsdp_shard``.
    Returns the whole trainable weights and EMA shadow after the updates, and each update's stats."""
    policy = _policy()
    config = TrainConfig(**FSDP_UPDATE_CONFIG)
    size = len(episodes) // groups
    mine = [ep for g in D.shard([episodes[i * size:(i + 1) * size] for i in range(groups)]) for ep in g]
    notes = config.spec.notes(mine, None, None, NoteOptions())
    optimizer = torch.optim.SGD([p for p in policy.model.parameters() if p.requires_grad], lr=1000.0)
    teacher = TeacherWeights(policy.model, "ema", config.ema_rate)
    if sharded:
        D.fsdp_shard(policy.model, optimizer=optimizer, teacher=teacher, mixed_precision=mixed_precision)
    stats = [update(policy, optimizer, mine, notes, config, teacher=teacher) for _ in range(steps)]
    with D.full_state(policy.model, optimizer, teacher):
        params, shadow = _trainable(policy), {n: v.detach().clone() for n, v in teacher.shadow.items()}
    with D.gathered(policy.model):
        compute_dtype = next(policy.model.parameters()).dtype
    return {"params": params, "shadow": shadow, "sharded": D.is_sharded(policy.model), "local_episodes": len(mine),
            "compute_dtype": compute_dtype, "master_dtype": next(policy.model.parameters()).dtype,
            "stats": [(s.stepped, s.loss, s.grad_norm, s.tokens_trained) for s in stats]}


def _init(rank: int, world: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)


@pytest.fixture(scope="module")
def batch(smol_tokenizer):
    """Three Lookup tasks x a group of 2 (one right, one wrong answer each): both GRPO and distillation train;
    2 ranks get 2 groups and 1 group (unequal numbers of micro-batches)."""
    envs = [hero_gym.make(ENV) for _ in range(2)]
    out = []
    for index in (0, 1, 2):
        task = [Task(seed=index, options={"task_index": index})]
        out += collect(OraclePolicy(smol_tokenizer, garbage_first=True), envs, tasks=task)
        out += collect(OraclePolicy(smol_tokenizer, wrong_code=True), envs, tasks=task)
    assert [ep.success for ep in out] == [True, False] * 3
    return out


def test_two_gloo_ranks_update_like_one_process_on_the_global_batch(batch, two_ranks):
    before = _trainable(_policy())
    single, single_stats = _one_update(batch, groups=3)
    assert single_stats["stepped"] and single_stats["local_episodes"] == 6
    results = [r["update"] for r in two_ranks]
    assert [s["local_episodes"] for _, s in results] == [4, 2]
    moved = max(float((single[n] - before[n]).abs().max()) for n in single)
    assert moved > 1e-3                                           # the update did change the weights
    for params, stats in results:
        for n in single:
            torch.testing.assert_close(params[n] - before[n], single[n] - before[n], rtol=1e-4, atol=1e-4 * moved)
        assert stats["tokens_trained"] == single_stats["tokens_trained"]
        assert stats["loss"] == pytest.approx(single_stats["loss"], rel=1e-5)
        assert stats["grad_norm"] == pytest.approx(single_stats["grad_norm"], rel=1e-5)


def _train_config(ckpt: str) -> TrainConfig:
    return TrainConfig(method="grpo", env_id=ENV, env_kwargs={"num_items": 4}, task_indices=[0, 1, 2, 3],
                       tasks_per_update=2, group_size=2, turn_budget=13, max_turns=3, max_new_tokens=6,
                       gradient_checkpointing=False, checkpoint_dir=ckpt)


def _fsdp_train_config(ckpt: str) -> TrainConfig:
    cfg = _train_config(ckpt)
    cfg.method, cfg.teacher, cfg.sharding = "envfb_sd", "ema", "fsdp"   # distillation with the EMA teacher
    return cfg


def _worker(rank: int, world: int, rendezvous: str, data: str, ckpt: str, out: str) -> None:
    """One rank: the update checks (DDP-style, FSDP), then short training runs (one spawn for all: imports
    are slow)."""
    _init(rank, world, rendezvous)
    try:
        episodes = pickle.loads(Path(data).read_bytes())
        upd = _one_update(episodes, groups=3)
        fsdp = _fsdp_updates(episodes, groups=3, sharded=True)
        fsdp_bf16 = _fsdp_updates(episodes, groups=3, sharded=True, steps=1, mixed_precision="bf16")
        fsdp_idle = _fsdp_updates(episodes, groups=1, sharded=True, steps=1)   # rank 1: no episode
        res = train(_policy(), _train_config(ckpt))
        fres = train(_policy(), _fsdp_train_config(ckpt + "_fsdp"))
        if rank == 0:                                   # the FSDP checkpoint resumed by 2 FSDP ranks (a copy)
            shutil.copytree(ckpt + "_fsdp", ckpt + "_fsdp_resumed")
        dist.barrier()
        cfg = _fsdp_train_config(ckpt + "_fsdp_resumed")
        cfg.turn_budget = fres.turns_used + 1
        rres = train(_policy(), cfg)
        Path(f"{out}.{rank}").write_bytes(pickle.dumps({
            "update": upd, "fsdp": fsdp, "fsdp_bf16": fsdp_bf16, "fsdp_idle": fsdp_idle,
            "train": {"turns": res.turns_used, "episodes": res.episodes, "iterations": res.iterations},
            "fsdp_train": {"turns": fres.turns_used, "episodes": fres.episodes, "iterations": fres.iterations,
                           "steps": fres.optimizer_steps},
            "fsdp_resumed": {"from": rres.resumed_from_iteration, "iterations": rres.iterations,
                             "steps": rres.optimizer_steps}}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(batch, tmp_path_factory):
    """What each of 2 gloo ranks (spawned with torch.multiprocessing) reports; the run folder is ``[0]["ckpt"]``."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "batch.pkl"
    data.write_bytes(pickle.dumps(batch))
    tmp_mp.spawn(_worker, args=(2, str(tmp / "rdzv"), str(data), str(tmp / "run"), str(tmp / "out")), nprocs=2)
    results = [pickle.loads((tmp / f"out.{r}").read_bytes()) for r in range(2)]
    for r in results:
        r["ckpt"] = tmp / "run"
    return results


def test_two_gloo_ranks_spend_the_turn_budget_once(two_ranks):
    ckpt = two_ranks[0]["ckpt"]
    res = [r["train"] for r in two_ranks]
    assert res[0] == res[1]                                       # both ranks count the same global turns
    logged = [json.loads(line) for line in (ckpt / "episodes.jsonl").read_text().splitlines()]
    assert len(logged) == res[0]["episodes"]                      # written once (rank 0), every episode
    assert res[0]["turns"] == sum(len(ep["turns"]) for ep in logged)
    # the budget stops the run after the batch that crossed it, exactly as in one process
    per_iteration = [sum(len(ep["turns"]) for ep in logged if ep["metadata"]["train_iteration"] == i + 1)
                     for i in range(res[0]["iterations"])]
    assert sum(per_iteration[:-1]) < 13 <= sum(per_iteration)
    # every task of every iteration ran exactly once per group member, on one rank
    cfg = _train_config(str(ckpt))
    for i in range(res[0]["iterations"]):
        want = sorted((t.seed, t.options["task_index"], g) for t in _tasks_for(i, cfg) for g in range(cfg.group_size))
        got = sorted((ep["seed"], ep["options"]["task_index"], ep["metadata"]["group_index"])
                     for ep in logged if ep["metadata"]["train_iteration"] == i + 1)
        assert got == want
    metrics = (ckpt / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == res[0]["iterations"]


def test_shard_splits_contiguously_and_covers_everything():
    items = list(range(7))
    parts = [D.shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert D.shard(items) == items and D.gather(items) == items   # no process group: identity
    with pytest.raises(ValueError, match="out of range"):
        D.shard(items, 3, 3)


def test_a_two_rank_checkpoint_resumes_in_one_process(two_ranks):
    ckpt = two_ranks[0]["ckpt"]
    done = two_ranks[0]["train"]
    cfg = _train_config(str(ckpt))
    cfg.turn_budget = done["turns"] + 1                           # one more batch
    res = train(_policy(), cfg)
    assert res.resumed_from_iteration == done["iterations"] and res.iterations == done["iterations"] + 1
    logged = [json.loads(line) for line in (ckpt / "episodes.jsonl").read_text().splitlines()]
    assert len(logged) == res.episodes == done["episodes"] + cfg.tasks_per_update * cfg.group_size
    assert res.turns_used == sum(len(ep["turns"]) for ep in logged)


def test_fsdp_on_two_gloo_ranks_updates_like_one_process_with_the_ema_teacher(batch, two_ranks):
    before = _trainable(_policy())
    single = _fsdp_updates(batch, groups=3, sharded=False)
    assert not single["sharded"] and all(s[0] for s in single["stats"])
    moved = max(float((single["params"][n] - before[n]).abs().max()) for n in before)
    assert moved > 1e-3
    # the second update's teacher (the EMA) is neither the live nor the initial weights
    assert max(float((single["shadow"][n] - single["params"][n]).abs().max()) for n in before) > 1e-3 * moved
    assert [r["fsdp"]["local_episodes"] for r in two_ranks] == [4, 2]   # unequal micro-batch counts
    for r in two_ranks:
        got = r["fsdp"]
        assert got["sharded"]
        for n in before:
            torch.testing.assert_close(got["params"][n] - before[n], single["params"][n] - before[n],
                                       rtol=1e-4, atol=1e-4 * moved)
            torch.testing.assert_close(got["shadow"][n] - before[n], single["shadow"][n] - before[n],
                                       rtol=1e-4, atol=1e-4 * moved)
        for (stepped, loss, norm, tokens), (_, s_loss, s_norm, s_tokens) in zip(got["stats"], single["stats"]):
            assert stepped and tokens == s_tokens
            assert loss == pytest.approx(s_loss, rel=1e-5) and norm == pytest.approx(s_norm, rel=1e-4)


@pytest.fixture(scope="module")
def one_update(batch):
    """One single-process update (EMA teacher) on the whole batch, and the weights before it."""
    return _trainable(_policy()), _fsdp_updates(batch, groups=3, sharded=False, steps=1)


def test_fsdp_with_an_idle_rank_updates_like_one_process(one_update, two_ranks):
    """All the batch on rank 0, none on rank 1: rank 1 runs no micro-batch, only the gradient reduction."""
    before, single = one_update
    moved = max(float((single["params"][n] - before[n]).abs().max()) for n in before)
    assert [r["fsdp_idle"]["local_episodes"] for r in two_ranks] == [6, 0]
    for r in two_ranks:
        got = r["fsdp_idle"]
        for n in before:
            torch.testing.assert_close(got["params"][n] - before[n], single["params"][n] - before[n],
                                       rtol=1e-4, atol=1e-4 * moved)
        assert got["stats"][0][3] == single["stats"][0][3]


def test_fsdp_bf16_mixed_precision_computes_in_bf16_and_keeps_fp32_master_weights(one_update, two_ranks):
    """The CPU-reachable part of ``mixed_precision="bf16"`` (meant for GPUs): gathered weights are bf16, the
    sharded master weights stay fp32, and the update is the fp32 one up to bf16 rounding."""
    before, single = one_update
    want = torch.cat([(single["params"][n] - before[n]).flatten() for n in before])
    for r in two_ranks:
        got = r["fsdp_bf16"]
        assert got["compute_dtype"] == torch.bfloat16 and got["master_dtype"] == torch.float32
        assert all(v.dtype == torch.float32 for v in got["params"].values())
        delta = torch.cat([(got["params"][n] - before[n]).flatten() for n in before])
        assert float((delta - want).norm() / want.norm()) < 0.1
        assert got["stats"][0][3] == single["stats"][0][3]        # same tokens trained


def test_an_fsdp_checkpoint_is_whole_and_resumes_in_one_process(two_ranks):
    ckpt = Path(str(two_ranks[0]["ckpt"]) + "_fsdp")
    done = two_ranks[0]["fsdp_train"]
    assert two_ranks[1]["fsdp_train"] == done and done["steps"] >= 1
    state = torch.load(ckpt / "checkpoint.pt", map_location="cpu", weights_only=False)
    full = _trainable(_policy())
    assert set(state["trainable"]) == set(full)
    for n, v in state["trainable"].items():                       # plain, whole tensors (not DTensor shards)
        assert type(v) is torch.Tensor and v.shape == full[n].shape
    for key in ("exp_avg", "exp_avg_sq"):
        shapes = sorted(tuple(s[key].shape) for s in state["optimizer"]["state"].values())
        assert shapes == sorted(tuple(v.shape) for v in full.values())
    shadow = state["teacher"]["shadow"]
    assert {n: tuple(v.shape) for n, v in shadow.items()} == {n: tuple(v.shape) for n, v in full.items()}
    cfg = _fsdp_train_config(str(ckpt))
    cfg.sharding, cfg.turn_budget = "none", done["turns"] + 1     # one more batch, unsharded
    res = train(_policy(), cfg)
    assert res.resumed_from_iteration == done["iterations"] and res.iterations == done["iterations"] + 1
    logged = [json.loads(line) for line in (ckpt / "episodes.jsonl").read_text().splitlines()]
    assert len(logged) == res.episodes == done["episodes"] + cfg.tasks_per_update * cfg.group_size


def test_an_fsdp_checkpoint_resumes_under_fsdp(two_ranks):
    """Restored whole (weights, AdamW moments, EMA), then sharded: the run goes on and writes a whole
    checkpoint again."""
    done, res = two_ranks[0]["fsdp_train"], two_ranks[0]["fsdp_resumed"]
    assert two_ranks[1]["fsdp_resumed"] == res
    assert res["from"] == done["iterations"] and res["iterations"] == done["iterations"] + 1
    state = torch.load(Path(str(two_ranks[0]["ckpt"]) + "_fsdp_resumed") / "checkpoint.pt", map_location="cpu",
                       weights_only=False)
    assert state["counters"]["iterations"] == res["iterations"]
    moments = state["optimizer"]["state"].values()
    assert {float(m["step"]) for m in moments} == {float(res["steps"])}      # AdamW went on from its state
    assert all(type(m["exp_avg"]) is torch.Tensor for m in moments)


def test_fsdp_refuses_what_it_cannot_do():
    policy = _policy()
    with pytest.raises(RuntimeError, match="needs torch.distributed"):
        D.fsdp_shard(policy.model)
    with pytest.raises(RuntimeError, match="needs torch.distributed"):
        train(policy, TrainConfig(env_id=ENV, sharding="fsdp", turn_budget=1))
    with pytest.raises(ValueError, match="sharding must be"):
        TrainConfig(sharding="zero3")
    with pytest.raises(ValueError, match="sharding='fsdp' only"):
        TrainConfig(mixed_precision="bf16")
    assert not D.is_sharded(policy.model)
    with D.gathered(policy.model), D.full_state(policy.model):    # unsharded: no-ops
        pass
    assert list(D.fsdp_micro_batches(policy.model, None, [1, 2])) == [1, 2]


def test_train_command_runs_with_a_pool_and_refuses_bad_input(tmp_path, capsys):
    """``hero-gym train`` (the command torchrun launches as ``-m hero_gym.cli train``) in one process."""
    from hero_gym.cli import main

    assert main(["train", "hero_gym/NoSuchEnv-v0", "--model", "tiny"]) == 2
    assert "NoSuchEnv" in capsys.readouterr().err
    assert main(["train", ENV, "--model", "tiny", "--pool", "threads"]) == 2
    assert "env_pool" in capsys.readouterr().err
    assert main(["train", ENV, "--model", "tiny", "--sharding", "fsdp"]) == 2    # no torchrun: refused
    assert "--sharding fsdp needs several ranks" in capsys.readouterr().err
    assert main(["train", ENV, "--model", "tiny", "--sharding", "zero3"]) == 2
    assert "sharding must be" in capsys.readouterr().err
    assert main(["train", ENV, "--method", "grpo", "--budget", "4", "--model", "tiny", "--out", str(tmp_path),
                 "--pool", "subprocess", "-c", "max_turns=2", "-c", "max_new_tokens=4",
                 "-c", "tasks_per_update=1", "-c", "group_size=2"]) == 0
    assert "ranks 1, updates 1, turns used 4" in capsys.readouterr().out
    assert (tmp_path / "adapter").is_dir() and (tmp_path / "checkpoint" / "episodes.jsonl").exists()
