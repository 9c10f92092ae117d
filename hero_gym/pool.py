"""Env pools: N copies of one environment stepped in parallel, in this process, in subprocesses or in
Ray actors, behind one interface.

A pool owns ``size`` env slots. :attr:`EnvPool.envs` gives one env-like handle per slot
(:class:`PooledEnv`: ``reset``/``step``/``close`` like a Gymnasium env), so anything that drives plain
envs (e.g. :func:`hero_gym.agents.rollout.collect`) drives a pool unchanged. Parallelism comes from
splitting a step into *send* and *receive*: ``handle.submit_step(action)`` ships the action to its
worker and returns at once; the following ``handle.step(action)`` collects the result. Submitting
every slot's action before stepping any of them lets slow, I/O-bound envs (WebShop's browser mode,
Tau-bench's LLM user) run side by side::

    pool = make_pool("ray", "hero_gym/Lookup-v0", size=8)          # or "subprocess", "inprocess"
    for env, action in zip(pool.envs, actions):
        env.submit_step(action)                                      # all workers start stepping
    results = [env.step(action) for env, action in zip(pool.envs, actions)]

Kinds:

* :class:`InProcessPool` - the envs live in this process; ``submit_step`` runs the step at once.
* :class:`SubprocessPool` - one :mod:`multiprocessing` worker process per slot, talking over a pipe.
* :class:`RayPool` - one Ray actor per slot. ``address`` joins an existing cluster
  (``ray.init(address=...)``); by default a local Ray instance is started (or the running one reused).

Crashes: when a worker dies (killed, segfault, out of memory) the pool starts a fresh worker for that
slot, appends a :class:`CrashReport` to :attr:`EnvPool.crashes` and the call that was in flight raises
:class:`WorkerCrashed` - the episode is marked failed by its driver (``collect`` ends it with
``stop_reason == "env_error"``), never silently lost. A ``reset`` is simply retried on the fresh worker
(it is idempotent). With ``replay_steps=True`` a crashed ``step`` is retried too: the fresh worker replays
the episode's reset and earlier actions first (correct only for envs that are deterministic given their
seed, e.g. Lookup, WebShop, Tau-bench with the scripted user). A slot that crashes more than
``max_restarts`` times in total raises :class:`WorkerCrashed` without restarting.

Exceptions raised by the env itself (not crashes) are re-raised by ``step``/``reset`` as they are
(a :class:`RemoteEnvError` carrying the remote type, message and traceback for the out-of-process kinds).
This module imports neither torch nor Ray (Ray only when a :class:`RayPool` is made).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CrashReport", "EnvPool", "InProcessPool", "PooledEnv", "RayPool", "RemoteEnvError",
           "SubprocessPool", "WorkerCrashed", "make_pool"]

PoolKind = Literal["inprocess", "subprocess", "ray"]


class WorkerCrashed(RuntimeError):
    """The worker of a slot died while serving a call; the slot has a fresh worker (unless it ran out of
    restarts). ``report`` says which slot, during what, and why."""

    def __init__(self, report: CrashReport):
        super().__init__(f"env worker of slot {report.slot} crashed during {report.during}: {report.error}")
        self.report = report


class RemoteEnvError(RuntimeError):
    """An exception raised by an env inside a worker, re-raised in the driver (``remote_type`` is the
    original class name, ``remote_traceback`` the worker-side traceback)."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str = ""):
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


@dataclass
class CrashReport:
    """One worker crash: ``slot``, the call in flight (``"reset"``/``"step"``), the error seen by the
    driver, the episode's reset arguments, how many steps the episode had taken, and the outcome:
    ``"retried"`` (the call succeeded on the fresh worker), ``"failed"`` (the call raised
    :class:`WorkerCrashed`; the episode is lost to its driver, which must mark it) or ``"gave_up"``
    (no restarts left)."""

    slot: int
    during: str
    error: str
    reset_args: dict[str, Any] | None
    steps_taken: int
    outcome: str = "failed"
    time: float = field(default_factory=time.time)


# ------------------------------------------------------------------------------------ worker side


def _make_env(env_id: str | None, env_kwargs: dict[str, Any], env_fn: Callable[[], Any] | None) -> Any:
    if env_fn is not None:
        return env_fn()
    import hero_gym

    return hero_gym.make(env_id, **env_kwargs)


class _EnvHost:
    """The worker-side owner of one env: answers ``call(method, args)``; env exceptions come back as
    ``("error", type name, message, traceback)`` instead of killing the worker."""

    def __init__(self, env_id: str | None, env_kwargs: dict[str, Any], env_fn: Callable[[], Any] | None):
        self.env = _make_env(env_id, env_kwargs, env_fn)

    def describe(self) -> dict[str, Any]:
        spec = getattr(self.env, "spec", None)
        unwrapped = getattr(self.env, "unwrapped", self.env)
        return {"env_id": getattr(spec, "id", None) or type(unwrapped).__name__,
                "parser": getattr(unwrapped, "parser", "hermes"), "pid": os.getpid()}

    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        try:
            if method == "describe":
                return ("ok", self.describe())
            if method == "replay":   # reset, then the given actions; returns the last result
                reset_args, actions = args
                out = self.env.reset(**reset_args)
                for a in actions:
                    out = self.env.step(a)
                return ("ok", out)
            return ("ok", getattr(self.env, method)(*args, **kwargs))
        except Exception as e:  # the env failed: report it, keep serving
            return ("error", type(e).__name__, str(e), traceback.format_exc())


def _unwrap(reply: tuple[Any, ...]) -> Any:
    if reply[0] == "ok":
        return reply[1]
    raise RemoteEnvError(reply[1], reply[2], reply[3])


def _subprocess_main(conn: Any, env_id: str | None, env_kwargs: dict[str, Any],
                     env_fn: Callable[[], Any] | None) -> None:
    """Entry point of a :class:`SubprocessPool` worker: build the env, then serve calls until ``close``."""
    try:
        host = _EnvHost(env_id, env_kwargs, env_fn)
        conn.send(("ok", host.describe()))
    except Exception as e:
        conn.send(("error", type(e).__name__, str(e), traceback.format_exc()))
        return
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):
            break
        reply = host.call(method, args, kwargs)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as e:  # an unpicklable result: say so
            conn.send(("error", type(e).__name__, f"{method} result cannot be sent to the driver: {e}", ""))
        if method == "close":
            break


# ------------------------------------------------------------------------------------ driver side


_NOT_SENT = object()   # a submitted step whose send already found the worker dead


class _WorkerDied(Exception):
    """Raised by a pool's transport when the worker is gone (turned into :class:`WorkerCrashed`)."""


class EnvPool(ABC):
    """``size`` envs of one kind, each in its own worker slot (see the module docstring).

    Args:
        env_id: a registered env id (each worker calls ``hero_gym.make(env_id, **env_kwargs)``), or
        env_fn: a picklable zero-argument factory instead (module-level function for subprocesses).
        size: number of slots.
        replay_steps: retry a step that crashed by replaying the episode on the fresh worker.
        max_restarts: total worker restarts allowed per slot.
    """

    kind: str = ""

    def __init__(self, env_id: str | None = None, size: int = 1, env_kwargs: dict[str, Any] | None = None, *,
                 env_fn: Callable[[], Any] | None = None, replay_steps: bool = False, max_restarts: int = 3):
        if (env_id is None) == (env_fn is None):
            raise ValueError("EnvPool: give exactly one of env_id and env_fn")
        if int(size) < 1:
            raise ValueError(f"EnvPool: size must be >= 1, got {size}")
        self.env_id, self.env_kwargs, self.env_fn = env_id, dict(env_kwargs or {}), env_fn
        self.size = int(size)
        self.replay_steps = bool(replay_steps)
        self.max_restarts = int(max_restarts)
        self.crashes: list[CrashReport] = []
        self.restarts = [0] * self.size
        self._closed = False
        self._info: list[dict[str, Any]] = [{} for _ in range(self.size)]
        self._start_all()
        self.envs: list[PooledEnv] = [PooledEnv(self, i) for i in range(self.size)]

    # ---- transport, per kind
    @abstractmethod
    def _start_all(self) -> None:
        """Start every slot's worker and fill ``self._info[i]`` with its ``describe()``."""

    @abstractmethod
    def _restart(self, i: int) -> None:
        """Replace slot ``i``'s worker by a fresh one (the old one is dead or killed)."""

    @abstractmethod
    def _send(self, i: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Start ``method`` on slot ``i``; returns a handle for :meth:`_recv`. Raises ``_WorkerDied``."""

    @abstractmethod
    def _recv(self, i: int, handle: Any) -> tuple[Any, ...]:
        """The raw reply of a call started by :meth:`_send`. Raises ``_WorkerDied``."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Stop every worker."""

    def worker_pid(self, i: int) -> int:
        """The process id of slot ``i``'s current worker (on its node, for Ray)."""
        return int(self._info[i]["pid"])

    # ---- calls with crash handling
    def _call(self, i: int, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
              handle: Any = None) -> Any:
        """Finish (or make) one call on slot ``i``; a dead worker is restarted and the crash reported."""
        try:
            if handle is None:
                handle = self._send(i, method, args, kwargs or {})
            return _unwrap(self._recv(i, handle))
        except _WorkerDied as e:
            return self._recover(i, method, args, kwargs or {}, str(e) or "worker died")

    def _recover(self, i: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: str) -> Any:
        env = self.envs[i]
        report = CrashReport(i, method, error, env._reset_args, len(env._actions))
        self.crashes.append(report)
        if self.restarts[i] >= self.max_restarts:
            report.outcome = "gave_up"
            raise WorkerCrashed(report)
        self.restarts[i] += 1
        try:
            self._restart(i)
        except Exception as e:  # the fresh worker did not start: this slot is out of service
            report.outcome, report.error = "gave_up", f"{report.error}; restart failed: {type(e).__name__}: {e}"
            raise WorkerCrashed(report) from None
        if method == "reset" or (method == "step" and self.replay_steps and env._reset_args is not None):
            call = ("reset", args, kwargs) if method == "reset" else (
                "replay", (env._reset_args, [*env._actions, *args]), {})
            try:
                out = _unwrap(self._recv(i, self._send(i, *call)))
            except _WorkerDied as e2:
                report.error += f"; retry crashed too: {e2}"
                raise WorkerCrashed(report) from None
            report.outcome = "retried"
            return out
        env._reset_args = None   # the episode's state died with the worker
        raise WorkerCrashed(report)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if not self._closed:
            self._closed = True
            self._shutdown()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id or self.env_fn!r}, size={self.size}, crashes={len(self.crashes)})"


class PooledEnv:
    """The env-like handle of one pool slot: ``reset``/``step``/``close`` as a Gymnasium env, plus
    :meth:`submit_step` to start a step without waiting for it."""

    def __init__(self, pool: EnvPool, slot: int):
        self.pool, self.slot = pool, slot
        info = pool._info[slot]
        self.env_id: str = info.get("env_id") or str(pool.env_id)
        self.parser: str = info.get("parser", "hermes")
        self._pending: tuple[Any, Any] | None = None   # (action, transport handle) of a submitted step
        self._reset_args: dict[str, Any] | None = None
        self._actions: list[Any] = []

    @property
    def unwrapped(self) -> PooledEnv:
        return self

    @property
    def spec(self) -> Any:
        return type("PoolSpec", (), {"id": self.env_id})()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._drop_pending()
        self._reset_args, self._actions = None, []
        out = self.pool._call(self.slot, "reset", (), {"seed": seed, "options": options})
        self._reset_args = {"seed": seed, "options": options}
        return out

    def submit_step(self, action: Any) -> None:
        """Send ``action`` to the worker and return at once; the next ``step(action)`` returns its result."""
        self._drop_pending()
        try:
            self._pending = (action, self.pool._send(self.slot, "step", (action,), {}))
        except _WorkerDied:   # dealt with (restart, report) by step()
            self._pending = (action, _NOT_SENT)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] != action:   # submitted something else: wait it out, step anew
            self._finish(pending)
            pending = None
        if pending is not None and pending[1] is _NOT_SENT:
            out = self.pool._recover(self.slot, "step", (action,), {}, "worker died before the step was sent")
        else:
            out = self.pool._call(self.slot, "step", (action,), handle=None if pending is None else pending[1])
        self._actions.append(action)
        return out

    def _finish(self, pending: tuple[Any, Any]) -> None:
        """Wait for a submitted step that is not going to be used (keeps the request/reply order)."""
        if pending[1] is not _NOT_SENT:
            try:
                self.pool._call(self.slot, "step", (pending[0],), handle=pending[1])
            except (WorkerCrashed, RemoteEnvError):
                pass

    def _drop_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._finish(pending)

    def close(self) -> None:
        """Release this handle; the pool closes when every one of its handles is released (or when
        :meth:`EnvPool.close` is called). ``collect`` never closes handles it was given."""
        self._released = True
        if all(getattr(e, "_released", False) for e in self.pool.envs):
            self.pool.close()

    def __repr__(self) -> str:
        return f"PooledEnv({self.env_id!r}, slot={self.slot} of {self.pool!r})"


class InProcessPool(EnvPool):
    """The envs live in this process; a submitted step runs at once (no parallelism, no crash isolation)."""

    kind = "inprocess"

    def _start_all(self) -> None:
        self._hosts = [_EnvHost(self.env_id, self.env_kwargs, self.env_fn) for _ in range(self.size)]
        self._info = [h.describe() for h in self._hosts]

    def _restart(self, i: int) -> None:  # pragma: no cover - an in-process env cannot crash separately
        self._hosts[i] = _EnvHost(self.env_id, self.env_kwargs, self.env_fn)

    def _send(self, i: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._hosts[i].call(method, args, kwargs)

    def _recv(self, i: int, handle: Any) -> tuple[Any, ...]:
        return handle

    def _shutdown(self) -> None:
        for h in self._hosts:
            try:
                h.env.close()
            except Exception:
                pass


class SubprocessPool(EnvPool):
    """One :mod:`multiprocessing` worker process per slot (``start_method``: ``"forkserver"`` by default,
    safe with a torch-using parent; ``"spawn"`` or ``"fork"`` also work). ``timeout`` (seconds) bounds
    every call; a worker silent for longer is killed and treated as crashed."""

    kind = "subprocess"

    def __init__(self, env_id: str | None = None, size: int = 1, env_kwargs: dict[str, Any] | None = None, *,
                 start_method: str = "forkserver", timeout: float | None = None, **kw: Any):
        self._ctx = mp.get_context(start_method)
        self.timeout = timeout
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        super().__init__(env_id, size, env_kwargs, **kw)

    def _spawn(self) -> tuple[Any, Any]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_subprocess_main, args=(child, self.env_id, self.env_kwargs, self.env_fn),
                                 daemon=True)
        proc.start()
        child.close()
        return proc, parent

    def _start_all(self) -> None:
        started = [self._spawn() for _ in range(self.size)]   # all workers boot in parallel
        self._procs = [p for p, _ in started]
        self._conns = [c for _, c in started]
        try:
            self._info = [self._hello(i) for i in range(self.size)]
        except Exception:
            self._shutdown()
            raise

    def _hello(self, i: int) -> dict[str, Any]:
        """The first message of a fresh worker: its ``describe()`` (or the error that kept the env from starting)."""
        try:
            return _unwrap(self._recv(i, None))
        except _WorkerDied as e:
            raise RuntimeError(f"SubprocessPool: worker {i} died while starting: {e}") from None

    def _restart(self, i: int) -> None:
        self._kill(i)
        self._procs[i], self._conns[i] = self._spawn()
        self._info[i] = self._hello(i)

    def _kill(self, i: int) -> None:
        proc = self._procs[i]
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        self._conns[i].close()

    def _send(self, i: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            self._conns[i].send((method, args, kwargs))
        except (BrokenPipeError, OSError, EOFError) as e:
            raise _WorkerDied(f"{type(e).__name__}: {e}") from None
        return True

    def _recv(self, i: int, handle: Any) -> tuple[Any, ...]:
        conn, proc = self._conns[i], self._procs[i]
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                if conn.poll(0.05):
                    return conn.recv()
            except (EOFError, OSError) as e:
                raise _WorkerDied(f"{type(e).__name__}: {e}; exit code {proc.exitcode}") from None
            if not proc.is_alive() and not conn.poll(0):
                raise _WorkerDied(f"worker process {proc.pid} exited with code {proc.exitcode}")
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                raise _WorkerDied(f"no reply within {self.timeout} s (worker killed)")

    def _shutdown(self) -> None:
        for i, proc in enumerate(self._procs):
            try:
                if proc.is_alive():
                    self._conns[i].send(("close", (), {}))
            except (BrokenPipeError, OSError):
                pass
        for i, proc in enumerate(self._procs):
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            self._conns[i].close()


class RayPool(EnvPool):
    """One Ray actor per slot. ``address`` is passed to ``ray.init`` when Ray is not initialised yet
    (``None`` starts a local instance, ``"auto"`` joins the cluster of this node, ``"ray://host:10001"``
    a remote one); ``ray_init_kwargs`` go along. ``actor_options`` are Ray actor options
    (e.g. ``{"num_cpus": 0.5}`` or ``{"resources": {...}}``). Needs ``pip install 'hero-gym[ray]'``."""

    kind = "ray"

    def __init__(self, env_id: str | None = None, size: int = 1, env_kwargs: dict[str, Any] | None = None, *,
                 address: str | None = None, ray_init_kwargs: dict[str, Any] | None = None,
                 actor_options: dict[str, Any] | None = None, timeout: float | None = None, **kw: Any):
        try:
            import ray
        except ImportError as e:
            raise ImportError("RayPool needs Ray: pip install 'hero-gym[ray]'") from e
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, **{"log_to_driver": False, **(ray_init_kwargs or {})})
        self._actor_cls = ray.remote(_EnvHost).options(**(actor_options or {}))
        self.timeout = timeout
        self._actors: list[Any] = []
        super().__init__(env_id, size, env_kwargs, **kw)

    def _start_all(self) -> None:
        self._actors = [self._actor_cls.remote(self.env_id, self.env_kwargs, self.env_fn) for _ in range(self.size)]
        refs = [a.call.remote("describe", (), {}) for a in self._actors]
        self._info = [None] * self.size  # type: ignore[list-item]
        for i, ref in enumerate(refs):
            try:
                self._info[i] = _unwrap(self._get(ref))
            except (_WorkerDied, RemoteEnvError):
                self._shutdown()
                raise

    def _get(self, ref: Any) -> Any:
        ex = self._ray.exceptions
        try:
            return self._ray.get(ref, timeout=self.timeout)
        except (ex.RayActorError, ex.WorkerCrashedError, ex.ObjectLostError) as e:
            raise _WorkerDied(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        except ex.GetTimeoutError:
            raise _WorkerDied(f"no reply within {self.timeout} s") from None
        except ex.RayTaskError as e:  # the actor's constructor raised: report the env's error
            cause = e.as_instanceof_cause()
            raise RemoteEnvError(type(cause).__name__, str(cause), str(e)) from None

    def _restart(self, i: int) -> None:
        try:
            self._ray.kill(self._actors[i], no_restart=True)
        except Exception:
            pass
        self._actors[i] = self._actor_cls.remote(self.env_id, self.env_kwargs, self.env_fn)
        self._info[i] = _unwrap(self._get(self._actors[i].call.remote("describe", (), {})))

    def _send(self, i: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._actors[i].call.remote(method, args, kwargs)

    def _recv(self, i: int, handle: Any) -> tuple[Any, ...]:
        return self._get(handle)

    def _shutdown(self) -> None:
        refs = []
        for a in self._actors:
            try:
                refs.append(a.call.remote("close", (), {}))
            except Exception:
                pass
        try:
            self._ray.wait(refs, num_returns=len(refs), timeout=10)
        except Exception:
            pass
        for a in self._actors:
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:
                pass


_KINDS: dict[str, type[EnvPool]] = {"inprocess": InProcessPool, "subprocess": SubprocessPool, "ray": RayPool}


def make_pool(kind: PoolKind, env_id: str | None = None, size: int = 1, env_kwargs: dict[str, Any] | None = None,
              **kwargs: Any) -> EnvPool:
    """A pool of ``kind`` (``"inprocess"``, ``"subprocess"`` or ``"ray"``); ``kwargs`` go to its class."""
    if kind not in _KINDS:
        raise ValueError(f"unknown pool kind {kind!r}; expected one of {sorted(_KINDS)}")
    return _KINDS[kind](env_id, size, env_kwargs, **kwargs)


def pool_envs(envs: Any) -> Sequence[Any] | Any:
    """``envs.envs`` for a pool, ``envs`` unchanged otherwise (what :func:`collect` steps)."""
    return envs.envs if isinstance(envs, EnvPool) else envs
