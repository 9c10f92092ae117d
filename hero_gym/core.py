"""The multi-turn text environment base class.

Observations are text. An action is the model's raw reply (``str``), an already parsed
:class:`~hero_gym.tools.ToolCall`, a :class:`TextMessage`, or a tool-call ``dict``
(``{"name": ..., "arguments": {...}}`` or an OpenAI assistant message with ``tool_calls``/``content``);
every env treats these the same way. Subclasses implement a few small hooks and get the rest:

* ``_reset`` (required), ``_step`` (required), ``tools``, ``system_prompt``, ``num_tasks``,
  ``splits``: what the env is;
* ``_extra_info``: keys merged into the ``info`` of every step (error steps included) and of reset;
* ``_on_truncation``: called on the step that uses up the turn budget (e.g. to grade the episode);
* ``_close``: release resources.

The base class parses raw replies with the env's parser, validates every call against the JSON
schemas of :meth:`~MultiTurnEnv.tools`, turns malformed actions into error observations (each costs
a turn), counts turns, truncates at the budget, validates ``reset`` options, and builds a uniform
``info`` dict (tools available now, turn, budget, action error, parsed action, observation role,
success). :meth:`select_task` is the one place a task index is read from ``reset`` options.

Episode-end conventions: ``terminated`` means the task ended (purchase, transfer, user stopped);
``truncated`` means the turn budget ran out first (never both). Gymnasium leaves a ``step`` after
the episode ended undefined; here it raises ``RuntimeError`` (call ``reset()``), as does a
``step`` before the first ``reset`` or after ``close()``. Bad ``reset`` options raise a one-line
``ValueError`` naming the valid values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np

from hero_gym.parsers import get_parser, parse_reply
from hero_gym.spaces import AnyText
from hero_gym.tools import ToolCall, ToolCallError, ToolSpec, validate_call

ObservationRole = Literal["tool", "user"]


@dataclass
class TextMessage:
    """A plain message from the agent (a reply with no tool call), e.g. to a simulated user."""

    content: str


@dataclass
class StepResult:
    """What a subclass's ``_step`` returns.

    ``role`` is the chat role the observation is shown as. ``success`` says whether the episode
    ended with the task solved; it is read on the step that ends the episode (``None`` counts as
    ``False``) and reported as ``info["success"]`` on every step.
    """

    observation: str
    reward: float = 0.0
    terminated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    role: ObservationRole = "tool"
    success: bool | None = None   # None: fall back to info["success"] (an env on the older contract)


Action = str | ToolCall | TextMessage | Mapping[str, Any]


def check_index(value: Any, n: int, name: str = "task_index", where: str = "") -> int:
    """``value`` as an index in ``0..n-1``; otherwise a one-line ``ValueError`` naming the range.

    Only integers are indices (``bool``, ``"3"`` and ``2.7`` are rejected, numpy integers accepted).
    ``where`` (e.g. ``" in split 'test'"``) is appended to the message.
    """
    valid = f"valid {name} values are the integers 0..{n - 1}{where}" if n > 0 else f"there are no tasks{where}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} {value!r} is not an integer ({type(value).__name__}); {valid}")
    if not 0 <= int(value) < n:
        raise ValueError(f"{name} {int(value)} is out of range; {valid}")
    return int(value)


class MultiTurnEnv(gym.Env[str, str]):
    """Base class for multi-turn text environments with tool-call actions.

    Args:
        max_turns: turn budget; the episode is truncated when it is used up. Defaults to
            ``default_max_turns`` of the subclass.
        parser: name of the reply parser (see :mod:`hero_gym.parsers`); defaults to
            ``default_parser`` of the subclass.
        render_mode: ``"ansi"`` (``render()`` returns the transcript) or ``"human"`` (prints it).

    ``reset(seed, options)`` accepts the option keys in ``reset_options`` (``task_index`` by
    default; envs add e.g. ``split``); any other key is an error.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi", "human"]}
    observation_space = AnyText()
    action_space = AnyText()

    default_max_turns: int = 30
    default_parser: str = "hermes"
    allow_text_messages: bool = True
    reset_options: ClassVar[frozenset[str]] = frozenset({"task_index"})
    #: Check each call against :meth:`tools` (name, required arguments, JSON-schema types) before
    #: ``_step``. An env that reproduces an original benchmark's own handling of bad arguments
    #: sets it to False and reports unknown tools and bad arguments from ``_step`` itself.
    validate_calls: bool = True
    #: Whether an empty (whitespace-only) message is an action; when False it is an error step.
    allow_empty_messages: bool = False

    def __init__(self, *, max_turns: int | None = None, parser: str | None = None,
                 render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, not {render_mode!r}")
        self.max_turns = int(max_turns if max_turns is not None else self.default_max_turns)
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        self.parser = parser or self.default_parser
        get_parser(self.parser)  # fail early on a bad name
        self.render_mode = render_mode
        self.observation_space = AnyText()
        self.action_space = AnyText()
        self._turn = 0
        self._done = True
        self._closed = False
        self._transcript: list[tuple[str, str]] = []

    # ----------------------------------------------------------------- subclass hooks
    def _reset(self, *, seed: int | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Start a new episode; return the first observation and env-specific info.

        ``options`` holds only keys of ``reset_options``; use :meth:`select_task` for the task.
        """
        raise NotImplementedError

    def tools(self) -> list[ToolSpec]:
        """The tools available now (may depend on the state, e.g. the current web page)."""
        return []

    def _step(self, action: ToolCall | TextMessage) -> StepResult:
        """Apply a valid action (calls are already checked against :meth:`tools`)."""
        raise NotImplementedError

    def system_prompt(self) -> str | None:
        """The system prompt for the agent (e.g. the domain policy), or ``None``."""
        return None

    def num_tasks(self, split: str | None = None) -> int | None:
        """How many tasks ``reset(options={"task_index": i})`` accepts (``i`` in ``0..n-1``) in
        ``split`` (default: the env's split), or ``None`` when tasks are not indexed."""
        return None

    def splits(self) -> list[str]:
        """The split names ``reset(options={"split": ...})`` accepts (empty: the env has no splits)."""
        return []

    def _extra_info(self) -> dict[str, Any]:
        """Env-specific keys merged into the ``info`` of reset and of every step, error steps
        included (e.g. the current page). Keys set by ``_step`` take precedence."""
        return {}

    def _on_truncation(self, result: StepResult) -> StepResult:
        """Called with the result of the step that used up the turn budget (the episode is
        truncated, not terminated), whether the action was valid or not; may set the reward,
        ``success`` and info (e.g. a grade). The default returns ``result`` unchanged."""
        return result

    def _close(self) -> None:
        """Release resources (servers, browsers)."""

    #: Whether :meth:`oracle_action` names a goal-aware expert (set True by envs that implement it).
    has_oracle: ClassVar[bool] = False

    def oracle_action(self) -> str | None:
        """Optional hook: the action a goal-aware expert takes in the env's *current* state, as a reply
        the env's parser reads (WebShop: ``click[...]``/``search[...]``; Tau-bench: a ``<tool_call>``
        block or a plain message), or ``None`` when the expert has nothing to do here (the episode has
        ended, or the env has no oracle).

        It must act from any reachable state (after another policy's mistakes, not only from a
        trajectory of its own) and must not change the env. The mechanism probe
        (:mod:`hero_gym.agents.probe`) compares the agent's action with it at every turn; envs that
        leave it out (``has_oracle = False``, the default) get the probe's oracle-free metrics only.
        The shipped envs implement it with their experts: WebShop's goal-knowing expert, Tau-bench's
        ``GoldExpert`` and Lookup's solver."""
        return None

    # ----------------------------------------------------------------- helpers for subclasses
    def check_split(self, split: Any) -> str:
        """``split`` if the env has it; otherwise a one-line ``ValueError`` naming the valid splits."""
        valid = self.splits()
        if not isinstance(split, str) or split not in valid:
            raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(map(repr, valid)) or '(none)'}")
        return split

    def select_task(self, options: Mapping[str, Any], *, split: str | None = None,
                    default: int | None = None) -> int:
        """The task index of this episode: ``options["task_index"]``, else ``default``, else drawn
        from ``np_random`` (so a seeded reset picks the same task). Validated against
        :meth:`num_tasks` of ``split``."""
        n = self.num_tasks(split) if split is not None else self.num_tasks()
        if n is None:
            raise ValueError(f"{type(self).__name__} has no indexed tasks")
        where = f" in split {split!r}" if split is not None else ""
        index = options.get("task_index")
        if index is None:
            index = default
        if index is None:
            if n < 1:
                raise ValueError(f"there are no tasks{where}")
            return int(self.np_random.integers(n))
        return check_index(index, n, "task_index", where)

    # ----------------------------------------------------------------- Gymnasium API
    @property
    def turn(self) -> int:
        """Turns taken in the current episode."""
        return self._turn

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode. ``options`` keys must be in ``reset_options`` (``ValueError`` otherwise)."""
        options = self._check_options(options)
        super().reset(seed=seed)
        self._turn = 0
        self._done = True   # stays ended if _reset raises
        self._closed = False
        obs, extra = self._reset(seed=seed, options=options)
        self._done = False
        info = {**self._extra_info(), **extra, **self._base_info(None, "user", None),
                "system_prompt": self.system_prompt()}
        self._transcript = [("observation", obs)]
        self._maybe_render()
        return obs, info

    def _check_options(self, options: Any) -> dict[str, Any]:
        if options is None:
            return {}
        if not isinstance(options, Mapping):
            raise ValueError(f"reset options must be a dict, not {type(options).__name__}")
        unknown = sorted(str(k) for k in options if k not in self.reset_options)
        if unknown:
            raise ValueError(f"unknown reset option(s) {', '.join(map(repr, unknown))}; "
                             f"valid options are {', '.join(map(repr, sorted(self.reset_options)))}")
        return dict(options)

    def step(self, action: Action) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Take one turn. Raises ``RuntimeError`` before ``reset``, after the episode ended or after
        ``close``; a malformed action is an error observation (``info["action_error"]``), not an
        exception. ``TypeError`` for an action that is none of the accepted types."""
        if self._closed:
            raise RuntimeError("step() after close(): call reset() to start a new episode.")
        if self._done:
            raise RuntimeError("The episode has ended (or reset() was never called): call reset() first.")
        if not isinstance(action, (str, ToolCall, TextMessage, Mapping)):
            raise TypeError(f"an action must be a str, ToolCall, TextMessage or tool-call dict, "
                            f"not {type(action).__name__}")
        self._turn += 1
        raw = action if isinstance(action, str) else repr(action)
        try:
            parsed = self.parse_action(action)
        except ToolCallError as err:
            result = StepResult(observation=f"Error: {err.message}", role="tool")
            error, parsed_dump = err.to_dict(), None
        else:
            result = self._step(parsed)
            error = None
            parsed_dump = parsed.model_dump() if isinstance(parsed, ToolCall) else {"message": parsed.content}
        terminated = bool(result.terminated)
        truncated = (not terminated) and self._turn >= self.max_turns
        if truncated:
            result = self._on_truncation(result)
        success = result.success if result.success is not None else result.info.get("success", False)
        info = {**self._extra_info(), **result.info, **self._base_info(error, result.role, parsed_dump),
                "success": bool(success) if (terminated or truncated) else False}
        if result.info.get("action_error") is not None:
            info["action_error"] = result.info["action_error"]
        self._done = terminated or truncated
        self._transcript += [("action", raw), ("observation", result.observation)]
        self._maybe_render()
        return result.observation, float(result.reward), terminated, truncated, info

    def parse_action(self, action: Action) -> ToolCall | TextMessage:
        """Turn a raw reply, a tool-call dict or a call into a validated action; raises
        :class:`ToolCallError`. A dict is read as a call (``{"name", "arguments"}``) or, when it has
        ``tool_calls``/``content``/``role``, as an OpenAI assistant message, whatever the env's parser."""
        if isinstance(action, TextMessage):
            return self._check_message(action)
        if isinstance(action, ToolCall):
            return validate_call(action, self.tools()) if self.validate_calls else action
        if isinstance(action, Mapping):
            message_keys = ("tool_calls", "content", "role")
            parsed = parse_reply(dict(action), "openai" if any(k in action for k in message_keys) else "json")
        else:
            parsed = parse_reply(action, self.parser)
        if len(parsed.calls) > 1:
            raise ToolCallError(
                "too_many_calls",
                f"This environment takes one tool call per turn; the reply had {len(parsed.calls)}.",
            )
        if parsed.calls:
            return validate_call(parsed.calls[0], self.tools()) if self.validate_calls else parsed.calls[0]
        return self._check_message(TextMessage(parsed.text))

    def _check_message(self, message: TextMessage) -> TextMessage:
        if not self.allow_text_messages:
            names = ", ".join(t.name for t in self.tools()) or "(none)"
            raise ToolCallError("no_action", f"No valid action found in the reply. Available actions: {names}.")
        if not message.content.strip() and not self.allow_empty_messages:
            raise ToolCallError("no_action", "The reply was empty: send a message or call a tool.")
        return message

    def _base_info(self, error: dict | None, role: ObservationRole, parsed: dict | None) -> dict[str, Any]:
        return {
            "tools": [t.to_openai() for t in self.tools()],
            "turn": self._turn,
            "max_turns": self.max_turns,
            "action_error": error,
            "observation_role": role,
            "parsed_action": parsed,
        }

    def render(self) -> str | None:
        text = "\n".join(f"[{kind}] {content}" for kind, content in self._transcript)
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def _maybe_render(self) -> None:
        if self.render_mode == "human":
            kind, content = self._transcript[-1]
            print(f"[{kind}] {content}")

    def close(self) -> None:
        self._close()
        self._done = True
        self._closed = True
        super().close()
