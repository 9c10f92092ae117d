"""A Gymnasium env that plays a hero-gym env served over HTTP (``hero-gym serve``, :mod:`hero_gym.serve`).

``env = hero_gym.remote.make("http://127.0.0.1:8000")`` behaves like the in-process env: ``reset(seed=,
options=)`` returns ``(observation, info)`` and ``step(action)`` ``(observation, reward, terminated, truncated,
info)``, where an action is a raw reply (``str``), a :class:`~hero_gym.ToolCall` or a
:class:`~hero_gym.TextMessage`, and ``info`` is the server-side env's info made JSON-safe (the same keys:
``tools``, ``turn``, ``max_turns``, ``action_error`` ...). The first ``reset`` opens a session; ``close`` ends it.
Server errors raise :class:`RemoteEnvError` with the server's message (stepping an ended episode raises
``RuntimeError`` as in-process).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from hero_gym.core import TextMessage
from hero_gym.spaces import AnyText
from hero_gym.tools import ToolCall

__all__ = ["RemoteEnv", "RemoteEnvError", "make"]


class RemoteEnvError(RuntimeError):
    """The server answered with an error (``status`` is the HTTP status)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def action_payload(action: str | ToolCall | TextMessage) -> dict[str, Any]:
    """The wire form of an action (see :class:`hero_gym.serve.ActionIn`)."""
    if isinstance(action, ToolCall):
        return {"tool_call": {"name": action.name, "arguments": dict(action.arguments)}}
    if isinstance(action, TextMessage):
        return {"message": action.content}
    if isinstance(action, str):
        return {"text": action}
    raise TypeError(f"an action is a str, ToolCall or TextMessage, not {type(action).__name__}")


class RemoteEnv(gym.Env[str, str]):
    """One session on a hero-gym env server.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        timeout: seconds to wait for each request.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, url: str, *, timeout: float = 60.0):
        import requests

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.observation_space = AnyText()
        self.action_space = AnyText()
        self._http = requests.Session()
        self._sid: str | None = None
        meta = self._call("GET", "/metadata")
        self.env_id: str = meta.get("name", "")
        #: the server env's ``allow_text_messages`` and ``num_tasks()`` (from ``GET /metadata``)
        self.allow_text_messages: bool = bool(meta.get("allow_text_messages", False))
        self.remote_num_tasks: int | None = meta.get("num_tasks")

    @property
    def session_id(self) -> str | None:
        return self._sid

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        resp = self._http.request(method, self.url + path, json=body, timeout=self.timeout)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise RemoteEnvError(resp.status_code, str(detail))
        return resp.json() if resp.content else {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        body = {"seed": seed, "options": dict(options or {})}
        if self._sid is None:
            data = self._call("POST", "/sessions", body)
            self._sid = data["session_id"]
        else:
            try:
                data = self._call("POST", f"/sessions/{self._sid}/reset", body)
            except RemoteEnvError as err:
                if err.status != 404:       # the session expired: open a new one
                    raise
                self._sid = None
                return self.reset(seed=seed, options=options)
        obs = data["observation"]
        return obs["text"], obs["info"]

    def step(self, action: str | ToolCall | TextMessage) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._sid is None:
            raise RuntimeError("The episode has ended (or reset() was never called): call reset() first.")
        try:
            data = self._call("POST", f"/sessions/{self._sid}/step", {"action": action_payload(action)})
        except RemoteEnvError as err:
            if err.status == 409:
                raise RuntimeError(f"The episode has ended: call reset() first ({err.message})") from err
            raise
        obs = data["observation"]
        return obs["text"], float(data["reward"] or 0.0), obs["terminated"], obs["truncated"], obs["info"]

    def num_tasks(self) -> int | None:
        """How many task indices the served env accepts (``None``: not indexed)."""
        return self.remote_num_tasks

    def state(self) -> dict[str, Any]:
        """The session's state (turn as ``step_count``, ``done``, ``episodes``)."""
        if self._sid is None:
            raise RuntimeError("No session yet: call reset() first.")
        return self._call("GET", f"/sessions/{self._sid}/state")

    def close(self) -> None:
        if self._sid is not None:
            try:
                self._call("DELETE", f"/sessions/{self._sid}")
            except (RemoteEnvError, OSError):
                pass
            self._sid = None
        self._http.close()
        super().close()


def make(url: str, **kwargs: Any) -> RemoteEnv:
    """A :class:`RemoteEnv` on the server at ``url`` (``kwargs``: ``timeout``)."""
    return RemoteEnv(url, **kwargs)
