"""Typed episode records and their JSONL storage.

An :class:`Episode` holds everything needed to train on or audit a rollout: the system prompt,
the first observation, the tools, and one :class:`Turn` per agent action with the raw reply,
the parsed call, the observation, reward and flags, and — when a model produced the action —
the exact context token ids it saw, the sampled token ids and their log-probs. Training reads
these ids back instead of re-tokenising text, so training uses exactly what was sampled.

JSONL: one episode per line, each carrying ``schema_version``; loading checks the version.
Floats are written with ``repr`` precision by the JSON encoder, so a round trip is lossless.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from hero_gym.tools import ToolCall

SCHEMA_VERSION = 1


class Message(BaseModel):
    """One chat message (OpenAI roles)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCall] | None = None
    name: str | None = None

    def to_chat(self) -> dict[str, Any]:
        """A plain dict for chat templates (``tool_calls`` in the OpenAI function form)."""
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in self.tool_calls
            ]
        if self.name:
            d["name"] = self.name
        return d


class Turn(BaseModel):
    """One agent action and what followed it."""

    index: int
    action_text: str
    parsed_action: dict[str, Any] | None = None
    action_error: dict[str, Any] | None = None
    observation: str
    observation_role: Literal["tool", "user"] = "tool"
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = Field(default_factory=dict)
    context_token_ids: list[int] | None = None
    action_token_ids: list[int] | None = None
    action_logprobs: list[float] | None = None
    timings: dict[str, float] = Field(default_factory=dict)

    @property
    def tool_call(self) -> ToolCall | None:
        """The parsed tool call, or ``None`` for a plain message or a malformed action."""
        if self.parsed_action and "name" in self.parsed_action:
            return ToolCall.model_validate(self.parsed_action)
        return None


class Episode(BaseModel):
    """A full rollout of one env episode."""

    schema_version: int = SCHEMA_VERSION
    episode_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    env_id: str
    seed: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    task_id: str | None = None
    system_prompt: str | None = None
    initial_observation: str
    tools: list[dict[str, Any]] = Field(default_factory=list)
    turns: list[Turn] = Field(default_factory=list)
    total_reward: float = 0.0
    success: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def terminated(self) -> bool:
        return bool(self.turns) and self.turns[-1].terminated

    @property
    def truncated(self) -> bool:
        return bool(self.turns) and self.turns[-1].truncated


def save_jsonl(episodes: Iterable[Episode], path: str | os.PathLike, append: bool = False) -> None:
    """Write episodes, one JSON object per line; ``append`` adds to an existing file (flushed + fsynced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for ep in episodes:
            f.write(ep.model_dump_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_jsonl(path: str | os.PathLike) -> list[Episode]:
    """Read episodes written by :func:`save_jsonl`. A torn last line (a killed writer) is skipped."""
    episodes: list[Episode] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the process died mid-write; everything before it is intact
            raise
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"{path}:{i + 1}: episode schema_version {version!r}, this library reads {SCHEMA_VERSION}")
        episodes.append(Episode.model_validate(data))
    return episodes
