"""hero-gym envs as TRL ``GRPOTrainer`` environments (``environment_factory``).

TRL (tested with ``trl==1.16.0``, ``transformers==5.23.0``) accepts
``GRPOTrainer(environment_factory=Factory)``: ``Factory()`` builds one environment instance per
rollout; TRL calls ``instance.reset(**row)`` with the dataset row (the returned string is appended to
the last user message of the prompt), exposes every public method of the class except ``reset`` and
``get_reward`` as a tool (its schema comes from the method's type hints and Google-style docstring via
``transformers.utils.get_json_schema``), runs the model's tool calls against the instance, and, when the
class defines ``get_reward()``, adds it as a reward source logged under the class name.

:func:`environment_factory` builds such a class from any registered env's :class:`~hero_gym.ToolSpec`:

* one method per tool, with typed arguments (JSON-schema types -> Python hints: ``string`` -> ``str``,
  ``integer`` -> ``int``, ``array`` of strings -> ``list[str]``, ``enum`` -> ``Literal[...]``; nested
  object schemas are kept in the argument's description),
* ``respond(content)`` for a plain text message to the user (the env's simulated user, or its
  reminder) when the env accepts messages (Tau-bench and Lookup do, WebShop does not),
* ``reset(task_index=..., seed=..., split=...)`` reading those dataset columns (other columns are ignored),
* ``get_reward()``: the env's summed episode reward.

Each tool call is one env step: the call is validated by the env exactly as in-process (a bad call costs a
turn and returns the env's error message). After the episode ends, a further call raises, which TRL shows
the model as a tool error; the reward is already fixed. :func:`task_dataset` builds the prompts (the env's
system prompt and one row per task index) and :func:`env_reward` is the reward function for those who prefer
``reward_funcs`` (then pass ``owns_reward=False``). With ``url=`` both play an env served by ``hero-gym serve``
(one HTTP session per instance) instead of an in-process one.

:class:`HEROTrainer` and :class:`HEROConfig` (a ``GRPOTrainer`` that trains with hero-gym's per-turn
self-distillation on these envs; :mod:`hero_gym.adapters.trl_trainer`, docs/trl.md) are importable from here too.
"""

from __future__ import annotations

import inspect
import json
import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import hero_gym
from hero_gym.core import TextMessage
from hero_gym.tools import ToolCall, ToolSpec

__all__ = ["EnvStep", "HeroGymTRLEnv", "env_reward", "environment_factory", "schema_to_annotation", "task_dataset"]
# HEROTrainer and HEROConfig are attributes too (module __getattr__ below), left out of __all__ so that a star import
# does not pull in torch and trl.

MESSAGE_TOOL = "respond"   # tau-bench's name for a message to the user (RESPOND_ACTION_NAME in tau_bench/types.py)
_RESERVED = {"reset", "get_reward"}
_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": type(None)}
_WS = re.compile(r"\s+")


def schema_to_annotation(schema: dict[str, Any]) -> Any:
    """The Python type hint that ``transformers.utils.get_json_schema`` turns back into ``schema``'s type.

    Handles scalar types, ``enum`` (-> ``Literal``), arrays (-> ``list[item hint]``), objects (-> ``dict``),
    type lists and ``anyOf``/``oneOf`` (-> ``Union``); anything else is ``Any`` (an unconstrained value).
    """
    if not isinstance(schema, dict):
        return Any
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, (str, int, float, bool)) or v is None for v in enum):
        return Literal[tuple(enum)]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _union([schema_to_annotation(s) for s in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([schema_to_annotation({**schema, "type": k}) for k in kind])
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        items = schema.get("items")
        return list[schema_to_annotation(items)] if isinstance(items, dict) and items else list
    if kind == "object":
        return dict
    return Any


def _union(hints: list[Any]) -> Any:
    unique = list(dict.fromkeys(hints))
    return unique[0] if len(unique) == 1 else Union[tuple(unique)]


def _lossy(schema: dict[str, Any]) -> bool:
    """Whether the hint of ``schema`` drops structure a model needs (object fields, array item fields)."""
    if schema.get("type") == "object" and schema.get("properties"):
        return True
    items = schema.get("items")
    return isinstance(items, dict) and _lossy(items)


def _one_line(text: str) -> str:
    return _WS.sub(" ", text or "").strip()


def _check_identifier(name: str, what: str) -> None:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"{what} {name!r} is not a Python identifier, so TRL cannot expose it as a method argument "
                         "or tool; rename it in the env's ToolSpec.")


def _tool_method(spec: ToolSpec) -> Any:
    """A method named after ``spec`` whose signature and docstring describe its JSON schema to TRL."""
    _check_identifier(spec.name, "Tool name")
    if spec.name in _RESERVED or spec.name.startswith("_"):
        raise ValueError(f"Tool name {spec.name!r} clashes with TRL's environment protocol "
                         f"({', '.join(sorted(_RESERVED))} and names starting with '_' are not tools).")
    props: dict[str, Any] = (spec.parameters or {}).get("properties", {}) or {}
    required = set((spec.parameters or {}).get("required", []) or [])
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {}
    arg_docs = []
    for pname, pschema in props.items():
        _check_identifier(pname, f"Argument of tool {spec.name!r}:")
        if pname == "self":
            raise ValueError(f"Tool {spec.name!r} has an argument named 'self', which a method cannot take.")
        hint = schema_to_annotation(pschema)
        optional = pname not in required
        annotations[pname] = Optional[hint] if optional else hint
        params.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY,
                                        default=None if optional else inspect.Parameter.empty,
                                        annotation=annotations[pname]))
        doc = _one_line(pschema.get("description", "") if isinstance(pschema, dict) else "") or f"The {pname}."
        if isinstance(pschema, dict) and _lossy(pschema):
            shape = {k: v for k, v in pschema.items() if k != "description"}
            doc += f" JSON schema: {json.dumps(shape, separators=(',', ':'))}"
        if doc.lower().rstrip(".").endswith(")") and "(choices:" in doc.lower():
            doc += "."   # keep transformers from reading "(choices: ...)" as an enum
        arg_docs.append(f"    {pname}: {doc}")
    annotations["return"] = str
    name = spec.name

    def tool(self, **arguments: Any) -> str:  # noqa: ANN001 - TRL skips an unannotated ``self``
        return self._act(ToolCall(name=name, arguments=arguments))

    tool.__name__ = tool.__qualname__ = name
    tool.__signature__ = inspect.Signature(params, return_annotation=str)  # type: ignore[attr-defined]
    tool.__annotations__ = annotations
    description = _one_line(spec.description) or f"Call the tool {name}."
    tool.__doc__ = description + ("\n\nArgs:\n" + "\n".join(arg_docs) if arg_docs else "") + \
        "\n\nReturns:\n    The environment's observation."
    return tool


def _message_method(name: str) -> Any:
    """The ``message_tool`` method: a plain text message to the user (one env step)."""

    def method(self, content: str) -> str:  # noqa: ANN001 - TRL skips an unannotated ``self``
        return self._act(TextMessage(str(content)))

    method.__name__ = method.__qualname__ = name
    method.__doc__ = ("Send a plain text message to the user and return the user's reply.\n\n"
                      "Args:\n    content: The message to the user.\n\nReturns:\n    The user's reply.")
    return method


@dataclass(frozen=True)
class EnvStep:
    """One env step taken through a tool method: the action, and what ``env.step`` returned."""

    action: ToolCall | TextMessage
    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class HeroGymTRLEnv:
    """Base of the classes :func:`environment_factory` builds: one hero-gym env per instance.

    Public attributes (properties, so TRL does not take them for tools): :attr:`env` (the Gymnasium env),
    :attr:`reward` (summed over the episode), :attr:`done`, :attr:`observations` (of this episode),
    :attr:`steps` (one :class:`EnvStep` per env step, which :class:`~hero_gym.adapters.trl_trainer.HEROTrainer`
    turns into episode records) and :attr:`task_index`.
    """

    env_id: str = ""
    env_kwargs: dict[str, Any] = {}
    url: str | None = None

    def __init__(self) -> None:
        self._env = _open(self.env_id, self.url, self.env_kwargs)
        self._reward = 0.0
        self._done = True
        self._observations: list[str] = []
        self._infos: list[dict[str, Any]] = []
        self._steps: list[EnvStep] = []
        self._task_index: int | None = None

    @property
    def env(self) -> Any:
        return self._env

    @property
    def reward(self) -> float:
        return self._reward

    @property
    def done(self) -> bool:
        return self._done

    @property
    def observations(self) -> list[str]:
        return list(self._observations)

    @property
    def infos(self) -> list[dict[str, Any]]:
        return list(self._infos)

    @property
    def steps(self) -> list[EnvStep]:
        """The env steps of this episode, in order (one per tool call that reached the env)."""
        return list(self._steps)

    @property
    def task_index(self) -> int | None:
        """The ``task_index`` of the last :meth:`reset` (``None`` when the row gave none)."""
        return self._task_index

    def reset(self, task_index: int | None = None, seed: int | None = None, split: str | None = None,
              **_columns: Any) -> str:
        """Start an episode; returns the first observation (TRL appends it to the prompt's last user message).

        ``task_index``, ``seed`` and ``split`` come from the dataset row; other columns (``prompt``, ...) are ignored.
        """
        options: dict[str, Any] = {}
        if task_index is not None:
            options["task_index"] = int(task_index)
        if split is not None:
            options["split"] = split
        obs, info = self._env.reset(seed=None if seed is None else int(seed), options=options)
        self._reward = 0.0
        self._done = False
        self._observations = [obs]
        self._infos = [info]
        self._steps = []
        self._task_index = None if task_index is None else int(task_index)
        return obs

    def get_reward(self) -> float:
        """The env's reward summed over the episode (0 if it is unfinished or the model never acted)."""
        return float(self._reward)

    def _act(self, action: ToolCall | TextMessage) -> str:
        if self._done:
            raise RuntimeError("The episode has ended; no more actions are accepted.")
        obs, reward, terminated, truncated, info = self._env.step(action)
        self._reward += float(reward)
        self._done = bool(terminated or truncated)
        self._observations.append(obs)
        self._infos.append(info)
        self._steps.append(EnvStep(action, obs, float(reward), bool(terminated), bool(truncated), info))
        return obs

    def __del__(self) -> None:
        env = self.__dict__.get("_env")
        if env is not None:
            try:
                env.close()
            except Exception:  # pragma: no cover - interpreter shutdown
                pass


def _class_name(env_id: str) -> str:
    return re.sub(r"\W", "_", env_id.split("/")[-1]).strip("_") or "Env"


def _open(env_id: str, url: str | None, env_kwargs: dict[str, Any]) -> Any:
    """The env in-process, or a :mod:`hero_gym.remote` session on the server at ``url``."""
    if url is None:
        return hero_gym.make(env_id, **env_kwargs)
    from hero_gym import remote

    if env_kwargs:
        raise ValueError("env kwargs are fixed by the server (hero-gym serve -k key=value); pass none with url=")
    env = remote.make(url)
    if env.env_id != env_id:
        env.close()
        raise ValueError(f"the server at {url} serves {env.env_id!r}, not {env_id!r}")
    return env


def environment_factory(env_id: str, *, url: str | None = None, tools: Sequence[ToolSpec] | None = None,
                        message_tool: str | None = MESSAGE_TOOL, owns_reward: bool = True,
                        **env_kwargs: Any) -> type[HeroGymTRLEnv]:
    """A class TRL's ``GRPOTrainer(environment_factory=...)`` accepts, for the registered env ``env_id``.

    Args:
        env_id: a registered env id, e.g. ``"hero_gym/TauRetail-v0"``.
        url: play the env served at this URL (``hero-gym serve``) instead of in-process: each instance opens
            one :func:`hero_gym.remote.make` session (env kwargs are then the server's).
        tools: the tools to expose; default: the env's tools right after ``reset`` (task 0). Envs whose tool
            set changes with the state (WebShop's click targets) should pass the full set here; a call of a tool
            not available in the current state gets the env's usual "Unknown tool" error observation.
        message_tool: name of the extra tool that sends a plain message to the user when the env accepts
            messages (``None``: no such tool).
        owns_reward: define ``get_reward`` (TRL then logs the env reward under the class name). With
            ``False`` pass :func:`env_reward` in ``reward_funcs`` instead.
        **env_kwargs: constructor kwargs of the env (``hero_gym.make(env_id, **env_kwargs)``).

    Returns:
        A zero-argument class; each instance owns one env.
    """
    probe = _open(env_id, url, env_kwargs)
    try:
        base = probe.unwrapped
        if tools is None:
            _, info = probe.reset(seed=0, options={"task_index": 0} if base.num_tasks() else {})
            tools = [ToolSpec.from_openai(t) for t in info["tools"]]
        allow_messages = bool(getattr(base, "allow_text_messages", False))
    finally:
        probe.close()
    namespace: dict[str, Any] = {"env_id": env_id, "env_kwargs": dict(env_kwargs), "url": url,
                                 "__doc__": f"{env_id} as a TRL environment (see hero_gym.adapters.trl)."}
    for spec in tools:
        if spec.name in namespace:
            raise ValueError(f"Duplicate tool name {spec.name!r} in {env_id}.")
        namespace[spec.name] = _tool_method(spec)
    if message_tool and allow_messages:
        _check_identifier(message_tool, "message_tool")
        if message_tool in namespace:
            raise ValueError(f"message_tool={message_tool!r} clashes with a tool of {env_id}; pick another name.")
        namespace[message_tool] = _message_method(message_tool)
    if not owns_reward:
        namespace["get_reward"] = None   # hide the base method: TRL only looks for functions
    return type(_class_name(env_id), (HeroGymTRLEnv,), namespace)


def task_dataset(env_id: str, *, url: str | None = None, task_indices: Sequence[int] | None = None,
                 split: str | None = None, repeat: int = 1, system_prompt: bool = True, **env_kwargs: Any) -> Any:
    """A ``datasets.Dataset`` of conversational prompts, one row per task (``repeat`` times each).

    Columns: ``prompt`` (the env's system prompt, if any, and an empty user message that ``reset`` fills
    with the first observation), ``task_index`` and, when given, ``split``. Default tasks: all of them.
    """
    from datasets import Dataset

    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    env = _open(env_id, url, env_kwargs)
    try:
        base = env.unwrapped
        total = base.num_tasks(split) if split is not None and url is None else base.num_tasks()
        if task_indices is None:
            if total is None:
                raise ValueError(f"{env_id} does not index its tasks; pass task_indices")
            task_indices = range(total)
        indices = [int(i) for i in task_indices]
        bad = [i for i in indices if total is not None and not 0 <= i < total]
        if bad:
            raise ValueError(f"task indices {bad[:5]} out of range 0..{(total or 0) - 1} for {env_id}")
        prompt_text = None
        if system_prompt:
            _, info = env.reset(seed=0, options={"task_index": indices[0], **({"split": split} if split else {})})
            prompt_text = info.get("system_prompt")
    finally:
        env.close()
    messages = ([{"role": "system", "content": prompt_text}] if prompt_text else []) + [{"role": "user", "content": ""}]
    rows: dict[str, list[Any]] = {"prompt": [], "task_index": []}
    for i in indices:
        for _ in range(repeat):
            rows["prompt"].append(messages)
            rows["task_index"].append(i)
    if split is not None:
        rows["split"] = [split] * len(rows["task_index"])
    return Dataset.from_dict(rows)


def env_reward(environments: Sequence[HeroGymTRLEnv], **_: Any) -> list[float]:
    """A TRL reward function: each rollout's env reward (use with ``owns_reward=False``)."""
    return [float(e.reward) for e in environments]


def __getattr__(name: str) -> Any:
    """``HEROTrainer`` and ``HEROConfig`` live in :mod:`hero_gym.adapters.trl_trainer` (imported on first use:
    it needs torch and trl, this module does not)."""
    if name in ("HEROTrainer", "HEROConfig"):
        from hero_gym.adapters import trl_trainer

        return getattr(trl_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
