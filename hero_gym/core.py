"""The multi-turn text environment base class.

Observations are text; an action is the model's raw reply (``str``), an already parsed
:class:`~hero_gym.tools.ToolCall`, or a :class:`TextMessage`. Subclasses implement four small
hooks (``_reset``, ``tools``, ``_step``, optionally ``system_prompt``) and get, for free:

* parsing of raw replies with the env's parser and JSON-schema validation of every call,
* error observations instead of exceptions for malformed actions (each costs a turn),
* the turn counter and truncation at the turn budget,
* a uniform ``info`` dict (tools available now, turn, budget, action error, observation role).

Contract (see DESIGN.md): ``terminated`` means the task ended (purchase, transfer, user stopped);
``truncated`` means the turn budget ran out first. Stepping an ended episode is a programming
error and raises ``RuntimeError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym

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
    """What a subclass's ``_step`` returns; ``role`` is the chat role the observation is shown as."""

    observation: str
    reward: float = 0.0
    terminated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    role: ObservationRole = "tool"


Action = str | ToolCall | TextMessage


class MultiTurnEnv(gym.Env[str, str]):
    """Base class for multi-turn text environments with tool-call actions.

    Args:
        max_turns: turn budget; the episode is truncated when it is used up. Defaults to
            ``default_max_turns`` of the subclass.
        parser: name of the reply parser (see :mod:`hero_gym.parsers`); defaults to
            ``default_parser`` of the subclass.
        render_mode: ``"ansi"`` (``render()`` returns the transcript) or ``"human"`` (prints it).
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi", "human"]}
    observation_space = AnyText()
    action_space = AnyText()

    default_max_turns: int = 30
    default_parser: str = "hermes"
    allow_text_messages: bool = True
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
        self._transcript: list[tuple[str, str]] = []

    # ----------------------------------------------------------------- subclass hooks
    def _reset(self, *, seed: int | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Start a new episode; return the first observation and env-specific info."""
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

    def num_tasks(self) -> int | None:
        """How many tasks ``reset(options={"task_index": i})`` accepts (``i`` in ``0..n-1``), or
        ``None`` when tasks are not indexed."""
        return None

    def _close(self) -> None:
        """Release resources (servers, browsers)."""

    # ----------------------------------------------------------------- Gymnasium API
    @property
    def turn(self) -> int:
        """Turns taken in the current episode."""
        return self._turn

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._turn = 0
        self._done = False
        obs, extra = self._reset(seed=seed, options=dict(options or {}))
        info = {**extra, **self._base_info(None, "user", None), "system_prompt": self.system_prompt()}
        self._transcript = [("observation", obs)]
        self._maybe_render()
        return obs, info

    def step(self, action: Action) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("The episode has ended (or reset() was never called): call reset() first.")
        self._turn += 1
        raw = action if isinstance(action, str) else repr(action)
        try:
            parsed = self.parse_action(action)
        except ToolCallError as err:
            result = StepResult(observation=f"Error: {err.message}", role="tool")
            info = self._base_info(err.to_dict(), result.role, None)
        else:
            result = self._step(parsed)
            parsed_dump = parsed.model_dump() if isinstance(parsed, ToolCall) else {"message": parsed.content}
            info = {**result.info, **self._base_info(None, result.role, parsed_dump)}
            if "action_error" in result.info and result.info["action_error"] is not None:
                info["action_error"] = result.info["action_error"]
        terminated = bool(result.terminated)
        truncated = (not terminated) and self._turn >= self.max_turns
        self._done = terminated or truncated
        self._transcript += [("action", raw), ("observation", result.observation)]
        self._maybe_render()
        return result.observation, float(result.reward), terminated, truncated, info

    def parse_action(self, action: Action) -> ToolCall | TextMessage:
        """Turn a raw reply (or call) into a validated action; raises :class:`ToolCallError`."""
        if isinstance(action, TextMessage):
            return self._check_message(action)
        if isinstance(action, ToolCall):
            return validate_call(action, self.tools()) if self.validate_calls else action
        parsed = parse_reply(action, self.parser)
        if len(parsed.calls) > 1:
            raise ToolCallError(
                "too_many_calls",
                f"This environment takes one tool call per turn; the reply had {len(parsed.calls)}.",
            )
        if parsed.calls:
            return validate_call(parsed.calls[0], self.tools()) if self.validate_calls else parsed.calls[0]
        return self._check_message(TextMessage(parsed.text if isinstance(action, str) else str(action)))

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
        super().close()
