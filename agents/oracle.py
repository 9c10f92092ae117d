"""The env's oracle, recorded: the goal-aware expert's action in every state a policy reached.

An env may name an oracle (:attr:`hero_gym.core.MultiTurnEnv.has_oracle`,
:meth:`~hero_gym.core.MultiTurnEnv.oracle_action`: WebShop's goal-knowing expert, Tau-bench's gold
actions, Lookup's solver). :class:`OracleRecorder` asks it before every step and stores the answer in the
step's ``info["oracle_action"]``, which :func:`~hero_gym.agents.rollout.collect` keeps on the turn. Two
users: the mechanism probe (``a*_t`` for its metrics, :mod:`hero_gym.agents.probe`) and the privileged
ceiling method ``hero_rules_oracle`` (the recorded action becomes the rule reflector's target,
:func:`oracle_target`). Nothing here is shown to the policy.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from hero_gym.records import Episode

__all__ = ["OracleRecorder", "oracle_target", "recording_oracle"]


class OracleRecorder(gym.Wrapper):
    """Stores, in each step's ``info["oracle_action"]``, the env's oracle action in the state *before* that
    step (``None`` when the env has none or its oracle cannot act there). Nothing else changes."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._next: str | None = None

    def _oracle(self) -> str | None:
        inner = self.env.unwrapped
        if not getattr(inner, "has_oracle", False):
            return None
        try:
            return inner.oracle_action()
        except (RuntimeError, ValueError, KeyError):   # an oracle that cannot act here: no comparison
            return None

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        self._next = self._oracle()
        return obs, info

    def step(self, action: Any):
        before = self._next
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "oracle_action": before}
        self._next = None if (terminated or truncated) else self._oracle()
        return obs, reward, terminated, truncated, info


def recording_oracle(env: gym.Env, why: str) -> OracleRecorder:
    """``env`` wrapped in :class:`OracleRecorder`; ``ValueError`` (``env`` closed) when it has no oracle."""
    if not getattr(env.unwrapped, "has_oracle", False):
        name = env.unwrapped.spec.id if env.unwrapped.spec is not None else type(env.unwrapped).__name__
        env.close()
        raise ValueError(f"{why} needs an env with an oracle (has_oracle); {name} has none")
    return OracleRecorder(env)


def oracle_target(ep: Episode, t: int) -> dict[str, Any] | None:
    """The oracle action recorded for turn ``t`` of ``ep`` as a target action (``{"name", "arguments"}`` or
    ``{"message"}``), or ``None`` where the oracle had none (or the turn was cut before the env stepped).
    ``ValueError`` when no turn of the episode was recorded (the envs were not wrapped): a ceiling without
    its oracle would silently be HERO (rules)."""
    from .targets import action_syntax, parse_target

    info = ep.turns[t].info or {}
    if "oracle_action" not in info and not any("oracle_action" in (x.info or {}) for x in ep.turns):
        raise ValueError("hero_rules_oracle needs the oracle action of every turn (info['oracle_action']): wrap "
                         "the training envs in hero_gym.agents.oracle.OracleRecorder")
    return parse_target(info.get("oracle_action"), action_syntax(ep))[0]
