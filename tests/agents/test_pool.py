"""Env pools (hero_gym.pool): in-process, subprocess and Ray pools give the same episodes as plain envs;
a worker killed mid-episode is restarted and its episode reported (failed, or retried by replay)."""

from __future__ import annotations

import functools
import os
import signal

import pytest

from hero_gym.agents.rollout import collect
from hero_gym.pool import (CrashReport, InProcessPool, RemoteEnvError, SubprocessPool, WorkerCrashed, make_pool)

from test_rollout import OraclePolicy

ENV = "hero_gym/Lookup-v0"
N_EPISODES = 6


def essence(ep):
    """Everything an episode's learner sees (ids and timings of the run excluded)."""
    return (ep.task_id, ep.seed, ep.initial_observation, ep.total_reward, ep.success, ep.metadata["stop_reason"],
            [(t.action_text, t.observation, t.reward, t.terminated, t.truncated, t.context_token_ids,
              t.action_token_ids) for t in ep.turns])


@pytest.fixture(scope="module")
def reference(smol_tokenizer):
    """Episodes of the plain (no pool) collect on 2 envs."""
    import hero_gym

    envs = [hero_gym.make(ENV) for _ in range(2)]
    eps = collect(OraclePolicy(smol_tokenizer, garbage_first=True), envs, N_EPISODES, seed=3)
    assert len(eps) == N_EPISODES and all(ep.success for ep in eps)
    return [essence(ep) for ep in eps]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


class Killer(OraclePolicy):
    """The oracle, but before generate call number ``at`` it SIGKILLs the worker of ``slot``."""

    def __init__(self, tokenizer, pool, slot: int = 0, at: int = 1):
        super().__init__(tokenizer, garbage_first=True)
        self.pool, self.slot, self.at, self.killed_pid = pool, slot, at, None

    def generate(self, contexts, sampling=None, *, max_new_tokens=None):
        if len(self.calls) == self.at:
            self.killed_pid = self.pool.worker_pid(self.slot)
            os.kill(self.killed_pid, signal.SIGKILL)
        return super().generate(contexts, sampling, max_new_tokens=max_new_tokens)


@pytest.mark.parametrize("kind", ["inprocess", "subprocess"])
def test_local_pools_give_the_same_episodes_as_plain_envs(kind, smol_tokenizer, reference):
    with make_pool(kind, ENV, size=2) as pool:
        eps = collect(OraclePolicy(smol_tokenizer, garbage_first=True), pool, N_EPISODES, seed=3)
        assert [essence(ep) for ep in eps] == reference
        assert pool.crashes == []
        assert [e.env_id for e in pool.envs] == [ENV, ENV]


def test_ray_pool_gives_the_same_episodes_as_the_inprocess_pool(smol_tokenizer, reference, ray_local):
    with make_pool("ray", ENV, size=2) as pool:
        assert {pool.worker_pid(i) for i in range(2)}.isdisjoint({os.getpid()})
        eps = collect(OraclePolicy(smol_tokenizer, garbage_first=True), pool, N_EPISODES, seed=3)
    with make_pool("inprocess", ENV, size=2) as local:
        local_eps = collect(OraclePolicy(smol_tokenizer, garbage_first=True), local, N_EPISODES, seed=3)
    assert [essence(ep) for ep in eps] == [essence(ep) for ep in local_eps] == reference


def _check_killed_episode_reported(eps, pool, policy, reference):
    assert len(eps) == N_EPISODES                                   # nothing silently lost
    failed = [ep for ep in eps if ep.metadata["stop_reason"] == "env_error"]
    assert len(failed) == 1 and "WorkerCrashed" in failed[0].metadata["env_error"]
    assert "slot 0 crashed during step" in failed[0].metadata["env_error"]
    assert failed[0].turns[-1].action_error["kind"] == "env_error"
    (report,) = pool.crashes
    assert isinstance(report, CrashReport) and report.slot == 0 and report.during == "step"
    assert report.outcome == "failed" and report.steps_taken == 1 and report.reset_args["seed"] == failed[0].seed
    assert pool.restarts == [1, 0] and pool.worker_pid(0) != policy.killed_pid
    # every other episode, including later ones on the restarted worker, is unharmed
    ok = [essence(ep) for ep in eps if ep is not failed[0]]
    assert ok == [r for r, ep in zip(reference, eps) if ep is not failed[0]]


def test_killing_a_ray_worker_mid_episode_is_survived_and_reported(smol_tokenizer, reference, ray_local):
    with make_pool("ray", ENV, size=2) as pool:
        policy = Killer(smol_tokenizer, pool, slot=0, at=1)
        eps = collect(policy, pool, N_EPISODES, seed=3)
        _check_killed_episode_reported(eps, pool, policy, reference)


def test_killing_a_subprocess_worker_mid_episode_is_survived_and_reported(smol_tokenizer, reference):
    with SubprocessPool(ENV, 2) as pool:
        policy = Killer(smol_tokenizer, pool, slot=0, at=1)
        eps = collect(policy, pool, N_EPISODES, seed=3)
        _check_killed_episode_reported(eps, pool, policy, reference)


def test_replay_retries_a_crashed_step_on_a_fresh_worker(smol_tokenizer, reference):
    with SubprocessPool(ENV, 2, replay_steps=True) as pool:
        policy = Killer(smol_tokenizer, pool, slot=0, at=2)
        eps = collect(policy, pool, N_EPISODES, seed=3)
        assert [essence(ep) for ep in eps] == reference             # the retried episode is the same
        (report,) = pool.crashes
        assert report.outcome == "retried" and report.steps_taken == 2 and pool.restarts == [1, 0]


def test_restarts_are_bounded(smol_tokenizer):
    with SubprocessPool(ENV, 1, max_restarts=0) as pool:
        env = pool.envs[0]
        env.reset(seed=0)
        os.kill(pool.worker_pid(0), signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="slot 0 crashed during step") as err:
            env.step("hello")
        assert err.value.report.outcome == "gave_up"


def lookup_unless(marker: str):
    """A Lookup env, or an error once ``marker`` exists (a worker that cannot be restarted)."""
    if os.path.exists(marker):
        raise OSError("env resources are gone")
    import hero_gym

    return hero_gym.make(ENV)


def test_a_worker_that_cannot_restart_is_reported_not_hung(tmp_path):
    marker = tmp_path / "gone"
    with SubprocessPool(env_fn=functools.partial(lookup_unless, str(marker)), size=2) as pool:
        env = pool.envs[0]
        env.reset(seed=0)
        marker.touch()
        os.kill(pool.worker_pid(0), signal.SIGKILL)
        with pytest.raises(WorkerCrashed, match="crashed during step") as err:
            env.step("hello")
        assert err.value.report.outcome == "gave_up" and "restart failed" in err.value.report.error
        assert "env resources are gone" in err.value.report.error
        obs, _ = pool.envs[1].reset(seed=0)                         # the other slot still serves
        assert "code for" in obs


def test_env_errors_come_back_as_errors_and_bad_arguments_are_refused():
    with InProcessPool(ENV, 1, {"num_items": 4}) as pool:
        with pytest.raises(RemoteEnvError, match="task_index"):
            pool.envs[0].reset(seed=0, options={"task_index": 99})
        obs, info = pool.envs[0].reset(seed=0, options={"task_index": 1})   # the slot still works
        assert "code for" in obs and info["task_index"] == 1
    with pytest.raises(ValueError, match="unknown pool kind"):
        make_pool("threads", ENV, 2)
    with pytest.raises(ValueError, match="size must be >= 1"):
        make_pool("inprocess", ENV, 0)
    with pytest.raises(ValueError, match="exactly one of env_id and env_fn"):
        InProcessPool(None, 1)
    with pytest.raises(RemoteEnvError):
        SubprocessPool("hero_gym/NoSuchEnv-v0", 1)
