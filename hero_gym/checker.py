"""``check_env``: Gymnasium's env checker plus what matters for multi-turn text envs."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import gymnasium as gym
from gymnasium.utils.env_checker import check_env as gym_check_env

from hero_gym.core import MultiTurnEnv
from hero_gym.tools import ToolCall


class EnvCheckError(AssertionError):
    """An env broke the multi-turn text env contract."""


def _fail(msg: str) -> None:
    raise EnvCheckError(msg)


def check_env(env: gym.Env, *, seed: int = 0, options: dict[str, Any] | None = None,
              skip_gymnasium: bool = False) -> None:
    """Check ``env`` (raw or wrapped); raise :class:`EnvCheckError` on the first problem.

    Checks, in order:

    1. Gymnasium's own checker (spaces, reset/step signatures, seeding, render, close).
    2. The same seed gives the same first observation; ``info`` carries the tools, turn and budget.
    3. A call of an unknown tool and random garbage text give an observation, never an exception;
       the unknown tool is reported in ``info["action_error"]`` and costs a turn.
    4. The turn budget truncates: with ``max_turns=2``, two bad actions end in ``truncated``;
       every step's ``info`` reports ``success``; stepping the ended episode raises ``RuntimeError``.
    5. Bad ``reset`` options raise ``ValueError``: an unknown option key and, when the env has
       indexed tasks, a ``task_index`` one past the last.
    6. ``close()`` releases resources: afterwards ``open_resources()`` is empty (if the env has it),
       and ``step()`` raises ``RuntimeError``.

    ``options`` are passed to every ``reset`` (e.g. a task index).
    """
    base = env.unwrapped
    if not isinstance(base, MultiTurnEnv):
        _fail(f"{type(base).__name__} is not a hero_gym.MultiTurnEnv")
    if not skip_gymnasium:
        # Gymnasium re-creates the env per render mode; "human" rendering prints, so keep it quiet.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            gym_check_env(base, skip_close_check=True)

    obs1, info1 = base.reset(seed=seed, options=options)
    obs2, _ = base.reset(seed=seed, options=options)
    if obs1 != obs2:
        _fail(f"reset(seed={seed}) gave two different first observations:\n{obs1!r}\n{obs2!r}")
    for key in ("tools", "turn", "max_turns"):
        if key not in info1:
            _fail(f"reset() info lacks {key!r}")
    if not isinstance(obs1, str):
        _fail(f"observation must be str, got {type(obs1).__name__}")

    obs, reward, terminated, truncated, info = base.step(ToolCall(name="__no_such_tool__", arguments={}))
    if not isinstance(obs, str) or not info.get("action_error"):
        _fail("an unknown tool call must give an error observation and info['action_error']")
    if info.get("turn") != 1:
        _fail(f"a malformed action must cost a turn; info['turn'] is {info.get('turn')!r}")
    if not terminated and not truncated:
        garbage = base.action_space.sample()
        try:
            out = base.step(garbage)
        except Exception as e:  # noqa: BLE001 - the point is to catch anything
            _fail(f"step({garbage!r}) raised {e!r}; malformed actions must become observations")
        if not isinstance(out[0], str):
            _fail("step() must return a str observation")

    saved = base.max_turns
    try:
        base.max_turns = 2
        base.reset(seed=seed, options=options)
        steps = [base.step(ToolCall(name="__no_such_tool__", arguments={})) for _ in range(2)]
        ended = [out[2:4] for out in steps]
        if ended[0] != (False, False) or ended[1] != (False, True):
            _fail(f"with max_turns=2, two bad actions must give (terminated, truncated) = "
                  f"(False, False) then (False, True); got {ended}")
        if any(not isinstance(out[4].get("success"), bool) for out in steps):
            _fail("every step's info must report 'success' (a bool)")
        try:
            base.step("more")
        except RuntimeError:
            pass
        else:
            _fail("step() after the episode ended must raise RuntimeError (call reset() first)")
    finally:
        base.max_turns = saved

    _expect_value_error(base, seed, {**(options or {}), "__no_such_option__": 1}, "an unknown option key")
    n = base.num_tasks()
    if n is not None:
        _expect_value_error(base, seed, {**(options or {}), "task_index": n}, f"task_index={n} (out of range)")

    base.reset(seed=seed, options=options)
    env.close()
    left = base.open_resources() if hasattr(base, "open_resources") else []
    if left:
        _fail(f"close() left resources open: {left}")
    try:
        base.step("more")
    except RuntimeError:
        pass
    else:
        _fail("step() after close() must raise RuntimeError")


def _expect_value_error(env: MultiTurnEnv, seed: int, options: dict[str, Any], what: str) -> None:
    try:
        env.reset(seed=seed, options=options)
    except ValueError:
        return
    _fail(f"reset() with {what} must raise ValueError")
