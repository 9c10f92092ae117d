import pytest

from hero_gym import EnvCheckError, StepResult, check_env, make
from hero_gym.envs.example import LookupEnv


def test_example_env_passes():
    check_env(make("hero_gym/Lookup-v0"))


class Nondeterministic(LookupEnv):
    calls = 0

    def _reset(self, *, seed, options):
        Nondeterministic.calls += 1
        return f"obs {Nondeterministic.calls}", {}


class NoTruncation(LookupEnv):
    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        return obs, r, term, False, info


class Crashes(LookupEnv):
    def _step(self, action):
        raise KeyError("boom")


class LeaksServer(LookupEnv):
    def open_resources(self):
        return ["http server on :8000"]


class ObservationNotStr(LookupEnv):
    def _step(self, action):
        return StepResult(observation=123)  # type: ignore[arg-type]


class IgnoresOptions(LookupEnv):
    reset_options = frozenset({"task_index", "__no_such_option__"})


class WrapsTaskIndex(LookupEnv):
    def _reset(self, *, seed, options):
        if "task_index" in options:
            options["task_index"] %= self.num_tasks()
        return super()._reset(seed=seed, options=options)


class NoSuccess(LookupEnv):
    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        info.pop("success")
        return obs, r, term, trunc, info


@pytest.mark.parametrize("cls,fragment", [
    (Nondeterministic, "different first observations"),
    (NoTruncation, "max_turns=2"),
    (LeaksServer, "left resources open"),
    (IgnoresOptions, "unknown option key"),
    (WrapsTaskIndex, "out of range"),
    (NoSuccess, "success"),
])
def test_broken_envs_are_caught(cls, fragment):
    with pytest.raises(EnvCheckError, match=fragment):
        check_env(cls(), skip_gymnasium=True)


def test_crashing_env_is_caught():
    with pytest.raises((EnvCheckError, KeyError)):
        check_env(Crashes(), skip_gymnasium=True)


def test_not_a_multiturn_env():
    import gymnasium as gym
    with pytest.raises(EnvCheckError, match="not a hero_gym.MultiTurnEnv"):
        check_env(gym.make("CartPole-v1"))
