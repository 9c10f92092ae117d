"""Tau-bench (v1) retail and airline environments for hero-gym.

Usage::

    import hero_gym
    env = hero_gym.make("hero_gym/TauRetail-v0")            # official data if $HERO_GYM_TAUBENCH_DIR
    obs, info = env.reset(seed=0, options={"task_index": 3})  # obs = the user's first message

Modules: ``data`` (loading, copy-on-write DB), ``tools_retail`` / ``tools_airline`` (v1 tool
semantics), ``reward`` (v1 reward, cached gold results), ``users`` (scripted and LLM users),
``generator`` (generated data), ``gold_expert`` (an expert that plays the gold actions),
``env`` (the Gymnasium envs).
"""

from .data import ENV_VAR, Dataset, Task, TauDB, load_official, official_available
from .users import LLMUser, ScriptedUser, UserContext

__all__ = [
    "ENV_VAR", "Dataset", "Task", "TauDB", "load_official", "official_available",
    "LLMUser", "ScriptedUser", "UserContext",
    "TauRetailEnv", "TauAirlineEnv",
]


def __getattr__(name):  # lazy: the env module imports the core
    if name in ("TauRetailEnv", "TauAirlineEnv", "TauBenchEnv"):
        from . import env
        return getattr(env, name)
    raise AttributeError(name)
