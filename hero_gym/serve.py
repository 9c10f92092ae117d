"""An HTTP server for any registered env: many concurrent sessions, JSON in and out (``hero-gym serve``).

Two protocols on one FastAPI app (run by uvicorn, on 127.0.0.1 unless told otherwise):

* **OpenEnv** (Hugging Face ``openenv-core``): ``GET /health``, ``GET /metadata``, ``GET /schema`` and the
  WebSocket ``/ws`` (one env per connection; messages ``{"type": "reset"|"step"|"state"|"close", "data": ...}``,
  answers ``{"type": "observation"|"state"|"error", "data": ...}``), so OpenEnv's ``GenericEnvClient(base_url=url)``
  and TRL's OpenEnv integration connect unmodified. OpenEnv's stateless ``POST /reset``/``/step`` (a fresh env per
  request) make no sense for multi-turn envs and are not served.
* **Sessions over plain HTTP** (what :func:`hero_gym.remote.make` speaks):

  =================================  =======================================================
  ``POST /sessions``                 new session, reset; body ``{"seed": int?, "options": {}}``
  ``POST /sessions/{id}/reset``      reset; same body
  ``POST /sessions/{id}/step``       ``{"action": ACTION}``
  ``GET /sessions/{id}/state``       turn, done, episode count
  ``DELETE /sessions/{id}``          close
  =================================  =======================================================

An ACTION is exactly one of ``{"text": raw model reply}`` (parsed by the env's parser), ``{"tool_call": {"name":
..., "arguments": {...}}}`` or ``{"message": "plain text to the user"}``. Every answer with an observation is
``{"observation": {"text", "terminated", "truncated", "info"}, "reward", "done"}`` (OpenEnv's result shape;
``info`` is the env's info dict made JSON-safe, with ``tools``, ``turn``, ``action_error`` ...).

Safety: nothing a client sends is executed -- actions are strings and JSON values handed to the env's parser and
validator, reset options are JSON values the env reads (``task_index``, ``split``, ...); constructor kwargs are
fixed when the server starts. Errors are 4xx with a message: malformed JSON 400, unknown or expired session 404,
stepping an ended episode 409, a body that does not match the schema 422, too many sessions 429, a body over
``max_body_bytes`` 413. Sessions idle longer than ``session_timeout`` seconds are closed.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

import hero_gym
from hero_gym.core import TextMessage
from hero_gym.tools import ToolCall

__all__ = ["ActionIn", "ResetIn", "ServerHandle", "SessionError", "Sessions", "create_app", "serve", "start_server"]


# --------------------------------------------------------------------------------------------- wire format
class _ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=256)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ActionIn(BaseModel):
    """One action: exactly one of ``text`` (a raw reply), ``tool_call`` or ``message``."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    tool_call: _ToolCallIn | None = None
    message: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ActionIn:
        given = [k for k in ("text", "tool_call", "message") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"an action needs exactly one of 'text', 'tool_call', 'message'; got {given or 'none'}")
        return self

    def to_env(self) -> str | ToolCall | TextMessage:
        if self.tool_call is not None:
            return ToolCall(name=self.tool_call.name, arguments=self.tool_call.arguments)
        if self.message is not None:
            return TextMessage(self.message)
        return str(self.text)


class ResetIn(BaseModel):
    """Reset parameters: ``seed`` and the env's reset ``options`` (``episode_id`` is OpenEnv's and only echoed)."""

    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(default=None, ge=0)
    options: dict[str, Any] = Field(default_factory=dict)
    episode_id: str | None = Field(default=None, max_length=255)


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: ActionIn


def _jsonable(value: Any) -> Any:
    """``value`` with every leaf JSON-safe (numpy scalars -> numbers, sets -> lists, other objects -> str)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump())
    if hasattr(value, "item") and callable(value.item):
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def result_payload(obs: str, reward: float | None, terminated: bool, truncated: bool,
                   info: dict[str, Any]) -> dict[str, Any]:
    """The observation answer (OpenEnv's ``{"observation", "reward", "done"}`` shape)."""
    return {"observation": {"text": obs, "terminated": bool(terminated), "truncated": bool(truncated),
                            "info": _jsonable(info)},
            "reward": None if reward is None else float(reward), "done": bool(terminated or truncated)}


# --------------------------------------------------------------------------------------------- sessions
class SessionError(Exception):
    """A request the sessions cannot serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Session:
    env: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    done: bool = True
    episodes: int = 0
    episode_id: str | None = None
    closed: bool = False


class Sessions:
    """The live envs of one server, each behind its own lock; idle ones are closed after ``timeout`` s."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None, *, max_sessions: int = 64,
                 timeout: float = 600.0):
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        if not timeout > 0:
            raise ValueError(f"session timeout must be > 0 seconds, got {timeout}")
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.max_sessions = max_sessions
        self.timeout = float(timeout)
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> str:
        """Open a session (an env made with the server's kwargs); 429 when ``max_sessions`` are live."""
        self.reap()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise SessionError(429, f"Too many sessions ({self.max_sessions} live); close one or retry later.")
            sid = secrets.token_urlsafe(16)
            self._sessions[sid] = _Session(env=None)
        try:
            env = hero_gym.make(self.env_id, **self.env_kwargs)
        except Exception:
            with self._lock:
                self._sessions.pop(sid, None)
            raise
        self._sessions[sid].env = env
        return sid

    def _get(self, sid: str) -> _Session:
        session = self._sessions.get(sid)
        if session is None or session.closed or session.env is None:
            raise SessionError(404, f"Unknown session id {sid[:64]!r}: it was never created, was closed, or expired "
                                    f"after {self.timeout:g} s idle. Create one with POST /sessions.")
        return session

    def reset(self, sid: str, request: ResetIn) -> dict[str, Any]:
        session = self._get(sid)
        with session.lock:
            self._get(sid)
            try:
                obs, info = session.env.reset(seed=request.seed, options=dict(request.options))
            except (ValueError, KeyError, TypeError) as err:
                session.done = True   # the env was not reset: stepping it needs a successful reset first
                raise SessionError(400, f"reset failed: {err}") from err
            session.done = False
            session.episodes += 1
            session.episode_id = request.episode_id
            session.last_used = time.monotonic()
            return result_payload(obs, None, False, False, info)

    def step(self, sid: str, action: ActionIn) -> dict[str, Any]:
        session = self._get(sid)
        with session.lock:
            self._get(sid)
            if session.done:
                raise SessionError(409, "The episode has ended (or was never reset): reset the session first.")
            try:
                obs, reward, terminated, truncated, info = session.env.step(action.to_env())
            except RuntimeError as err:   # the env's own "call reset() first" (Gymnasium convention)
                session.done = True
                raise SessionError(409, f"{err} Reset the session first.") from err
            session.done = bool(terminated or truncated)
            session.last_used = time.monotonic()
            return result_payload(obs, reward, terminated, truncated, info)

    def state(self, sid: str) -> dict[str, Any]:
        session = self._get(sid)
        with session.lock:
            session.last_used = time.monotonic()
            env = session.env.unwrapped
            return {"session_id": sid, "episode_id": session.episode_id, "step_count": int(env.turn),
                    "done": session.done, "episodes": session.episodes, "env_id": self.env_id}

    def close(self, sid: str) -> None:
        session = self._get(sid)
        with self._lock:
            self._sessions.pop(sid, None)
        with session.lock:
            session.closed = True
            session.env.close()

    def reap(self) -> int:
        """Close the sessions idle for longer than the timeout; returns how many."""
        now = time.monotonic()
        with self._lock:
            stale = [sid for sid, s in self._sessions.items()
                     if s.env is not None and now - s.last_used > self.timeout and not s.lock.locked()]
        for sid in stale:
            try:
                self.close(sid)
            except SessionError:
                pass
        return len(stale)

    def close_all(self) -> None:
        for sid in list(self._sessions):
            try:
                self.close(sid)
            except SessionError:
                pass


# --------------------------------------------------------------------------------------------- the app
def create_app(env_id: str, env_kwargs: dict[str, Any] | None = None, *, max_sessions: int = 64,
               session_timeout: float = 600.0, max_body_bytes: int = 1_000_000) -> FastAPI:
    """The FastAPI app serving ``env_id`` (see the module docstring). ``app.state.sessions`` is the store."""
    if env_id not in hero_gym.list_envs():
        raise ValueError(f"Unknown env id {env_id!r}; registered: {', '.join(hero_gym.list_envs())}")
    sessions = Sessions(env_id, env_kwargs, max_sessions=max_sessions, timeout=session_timeout)
    probe = hero_gym.make(env_id, **dict(env_kwargs or {}))   # fails early on bad kwargs
    try:
        about = {"allow_text_messages": bool(getattr(probe.unwrapped, "allow_text_messages", False)),
                 "num_tasks": probe.unwrapped.num_tasks()}
    finally:
        probe.close()
    app = FastAPI(title=f"hero-gym {env_id}", version=hero_gym.__version__)
    app.state.sessions = sessions

    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"detail": message, **extra}, status_code=status)

    @app.exception_handler(SessionError)
    async def _session_error(_: Request, err: SessionError) -> JSONResponse:
        return error(err.status, err.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            where = next(e for e in errors if e.get("type") == "json_invalid")
            return error(400, f"Malformed JSON body: {where.get('ctx', {}).get('error', 'cannot parse')}.")
        shown = [{"loc": list(e.get("loc", [])), "msg": e.get("msg", "")} for e in errors]
        return error(422, "The request body does not match the schema: " +
                     "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in shown), errors=shown)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return error(413, f"Request body over {max_body_bytes} bytes.")
        return await call_next(request)

    # ------------------------------------------------------------------ OpenEnv discovery
    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "healthy", "sessions": len(sessions), "max_sessions": sessions.max_sessions}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return {"name": env_id, "description": f"hero-gym environment {env_id} (multi-turn text, tool calls)",
                "version": hero_gym.__version__, "author": "hero-gym", "readme_content": None,
                "documentation_url": None, **about}

    @app.get("/schema")
    def schema() -> dict[str, Any]:
        return {"action": ActionIn.model_json_schema(), "observation": _OBSERVATION_SCHEMA, "state": _STATE_SCHEMA}

    # ------------------------------------------------------------------ HTTP sessions
    @app.post("/sessions", status_code=201)
    def create_session(body: ResetIn | None = None) -> dict[str, Any]:
        sid = sessions.create()
        try:
            payload = sessions.reset(sid, body or ResetIn())
        except SessionError:
            sessions.close(sid)
            raise
        return {"session_id": sid, **payload}

    @app.post("/sessions/{sid}/reset")
    def reset_session(sid: str, body: ResetIn | None = None) -> dict[str, Any]:
        sessions.reap()
        return sessions.reset(sid, body or ResetIn())

    @app.post("/sessions/{sid}/step")
    def step_session(sid: str, body: StepIn) -> dict[str, Any]:
        return sessions.step(sid, body.action)

    @app.get("/sessions/{sid}/state")
    def session_state(sid: str) -> dict[str, Any]:
        return sessions.state(sid)

    @app.delete("/sessions/{sid}", status_code=204, response_model=None)
    def close_session(sid: str) -> None:
        sessions.close(sid)

    # ------------------------------------------------------------------ OpenEnv WebSocket
    @app.websocket("/ws")
    async def websocket_session(ws: WebSocket) -> None:
        await ws.accept()

        async def send_error(code: str, message: str, **extra: Any) -> None:
            await ws.send_text(json.dumps({"type": "error", "data": {"message": message, "code": code, **extra}}))

        try:
            sid = await run_in_threadpool(sessions.create)
        except SessionError as err:
            await send_error("CAPACITY_REACHED", err.message)
            await ws.close()
            return
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.receive_text(), timeout=sessions.timeout)
                except asyncio.TimeoutError:
                    await send_error("SESSION_ERROR", f"Session closed after {sessions.timeout:g} s idle.")
                    break
                if len(raw) > max_body_bytes:
                    await send_error("VALIDATION_ERROR", f"Message over {max_body_bytes} bytes.")
                    continue
                try:
                    message = json.loads(raw)
                except json.JSONDecodeError as err:
                    await send_error("INVALID_JSON", f"Invalid JSON: {err}")
                    continue
                kind = message.get("type") if isinstance(message, dict) else None
                try:
                    if kind == "reset":
                        request = ResetIn.model_validate(_reset_data(message.get("data") or {}))
                        data = await run_in_threadpool(sessions.reset, sid, request)
                        await ws.send_text(json.dumps({"type": "observation", "data": data}))
                    elif kind == "step":
                        action = ActionIn.model_validate(_strip_metadata(message.get("data")))
                        data = await run_in_threadpool(sessions.step, sid, action)
                        await ws.send_text(json.dumps({"type": "observation", "data": data}))
                    elif kind == "state":
                        data = await run_in_threadpool(sessions.state, sid)
                        await ws.send_text(json.dumps({"type": "state", "data": data}))
                    elif kind == "close":
                        break
                    else:
                        await send_error("UNKNOWN_TYPE", f"Unknown message type: {str(kind)[:64]!r} "
                                                         "(expected reset, step, state or close).")
                except ValidationError as err:
                    await send_error("VALIDATION_ERROR", "Invalid message: " + "; ".join(
                        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()))
                except SessionError as err:
                    await send_error("EXECUTION_ERROR" if err.status != 404 else "SESSION_ERROR", err.message)
        except WebSocketDisconnect:
            pass
        finally:
            try:
                await run_in_threadpool(sessions.close, sid)
            except SessionError:
                pass
            try:
                await ws.close()
            except RuntimeError:
                pass

    return app


def _reset_data(data: Any) -> Any:
    """OpenEnv clients send reset kwargs flat (``seed``, ``episode_id``, anything else): move the rest to options."""
    if not isinstance(data, dict):
        return data
    known = {"seed", "options", "episode_id"}
    extra = {k: v for k, v in data.items() if k not in known}
    out = {k: v for k, v in data.items() if k in known}
    if extra:
        out["options"] = {**(out.get("options") or {}), **extra}
    return out


def _strip_metadata(data: Any) -> Any:
    """OpenEnv's typed actions carry an (empty) ``metadata`` field; it is not part of a hero-gym action."""
    if isinstance(data, dict) and "metadata" in data:
        return {k: v for k, v in data.items() if k != "metadata"}
    return data


_OBSERVATION_SCHEMA = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "description": "the observation (tool output or user message)"},
        "terminated": {"type": "boolean"}, "truncated": {"type": "boolean"},
        "info": {"type": "object", "description": "the env's info: tools, turn, max_turns, action_error, ..."},
    },
    "required": ["text", "terminated", "truncated", "info"],
}
_STATE_SCHEMA = {
    "type": "object",
    "properties": {"session_id": {"type": "string"}, "episode_id": {"type": ["string", "null"]},
                   "step_count": {"type": "integer"}, "done": {"type": "boolean"}, "episodes": {"type": "integer"},
                   "env_id": {"type": "string"}},
}


# --------------------------------------------------------------------------------------------- running it
@dataclass
class ServerHandle:
    """A server running in a background thread (:func:`start_server`); ``stop()`` shuts it down."""

    url: str
    server: Any
    thread: threading.Thread
    app: Any

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.app.state.sessions.close_all()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _config(app: Any, host: str, port: int, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, ws="websockets-sansio",
                          lifespan="on", timeout_keep_alive=30)


def start_server(env_id: str, env_kwargs: dict[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", **app_kwargs: Any) -> ServerHandle:
    """Serve ``env_id`` from a background thread (``port=0``: a free port); returns once it accepts requests."""
    import uvicorn

    app = create_app(env_id, env_kwargs, **app_kwargs)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, bound, log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"hero-gym-serve-{bound}")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server for {env_id} did not start")
        time.sleep(0.01)
    shown = f"[{host}]" if ":" in host else host
    return ServerHandle(url=f"http://{shown}:{bound}", server=server, thread=thread, app=app)


def serve(env_id: str, env_kwargs: dict[str, Any] | None = None, *, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info", **app_kwargs: Any) -> None:
    """Serve ``env_id`` in the foreground until interrupted (``hero-gym serve``)."""
    import uvicorn

    app = create_app(env_id, env_kwargs, **app_kwargs)
    try:
        uvicorn.Server(_config(app, host, port, log_level)).run()
    finally:
        app.state.sessions.close_all()
