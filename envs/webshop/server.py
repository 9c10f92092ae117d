"""The shop as a real HTTP web app (Flask), for people and for the browser mode.

Pages are the ones of :mod:`hero_gym.envs.webshop.pages`, served as plain HTML: no JavaScript, no
external assets; every string that came from a user (the search query) or from the data is
HTML-escaped. Many sessions run at once; the session id is the first part of every URL:

====================================  =====================================================
``/``                                 new session with a random goal (for people)
``/<sid>/start?goal=<goal id>``       (re)start session ``sid`` on a goal, go to its search page
``/<sid>/``                           search page (a GET form to ``/<sid>/results``)
``/<sid>/results?q=..&page=..``       results page
``/<sid>/item/<asin>?q=..&page=..&o=``  item page (``o=<type index>.<value index>`` per chosen option)
``/<sid>/item/<asin>/<sub>?...``      description / features / reviews
``/<sid>/buy/<asin>?...``             buy: the done page with the score (``data-reward`` on body)
``/healthz``                          "ok"
====================================  =====================================================

:class:`ShopServer` runs the app on 127.0.0.1 and a free port in a background thread (the browser
env starts and stops it); :func:`serve` runs it in the foreground (``hero-gym webshop-serve``).

Limits: both bind 127.0.0.1 unless told otherwise, and print a warning when asked to bind any
other address (the shop has no authentication: anyone who can reach the port can use it). Sessions
live in a :class:`SessionStore`: a session idle for ``session_ttl`` seconds (default 1 hour)
expires (its URLs answer 404 until it is started again), and at most ``max_sessions`` (default
100,000) are kept, the least recently used dropped first, so memory stays bounded however many
clients come and go. Sessions share nothing but the read-only catalog: the page state is in the
URL and the goal and purchase are per session id.
"""

from __future__ import annotations

import ipaddress
import random
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .catalog import DEFAULT_NUM_PRODUCTS, Catalog, get_catalog
from .pages import PageState, Shop, render_html, state_from_url
from .reward import get_reward

__all__ = ["create_app", "ShopServer", "SessionStore", "serve", "is_loopback"]

_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


DEFAULT_SESSION_TTL = 3600.0
DEFAULT_MAX_SESSIONS = 100_000


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.x.x.x``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_if_exposed(host: str) -> None:
    if not is_loopback(host):
        print(f"WARNING: the WebShop server binds {host}, not 127.0.0.1: it is reachable from other machines "
              "and has no authentication. Bind 127.0.0.1 (the default) unless you mean it.",
              file=sys.stderr, flush=True)


class SessionStore:
    """Thread-safe sessions ``sid -> {"goal_id", "purchase"}`` with idle expiry and a size bound.

    A session expires ``ttl`` seconds after its last use (``get`` or ``start``); when more than
    ``max_sessions`` are alive the least recently used is dropped. Both are O(1) amortised: the
    sessions are kept in order of last use, so expired ones are always at the front.
    """

    def __init__(self, ttl: float = DEFAULT_SESSION_TTL, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic):
        if not ttl > 0:
            raise ValueError(f"session ttl must be > 0 seconds, got {ttl!r}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions!r}")
        self.ttl, self.max_sessions, self._clock = float(ttl), int(max_sessions), clock
        self._data: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.expired = 0   # sessions dropped for idleness or the size bound (for monitoring)

    def _evict(self, now: float) -> None:
        while self._data:
            sid, (last, _) = next(iter(self._data.items()))
            if now - last < self.ttl and len(self._data) <= self.max_sessions:
                break
            del self._data[sid]
            self.expired += 1

    def start(self, sid: str, goal_id: int) -> None:
        """(Re)start session ``sid`` on a goal (a restart forgets the previous purchase)."""
        with self._lock:
            now = self._clock()
            self._data[sid] = (now, {"goal_id": goal_id, "purchase": None})
            self._data.move_to_end(sid)
            self._evict(now)

    def get(self, sid: str) -> dict[str, Any] | None:
        """The live session (a copy) and mark it used, or ``None`` if unknown or expired."""
        with self._lock:
            now = self._clock()
            self._evict(now)
            entry = self._data.get(sid)
            if entry is None:
                return None
            self._data[sid] = (now, entry[1])
            self._data.move_to_end(sid)
            return dict(entry[1])

    def set_purchase(self, sid: str, info: dict[str, Any]) -> None:
        with self._lock:
            entry = self._data.get(sid)
            if entry is not None:
                entry[1]["purchase"] = info

    def __len__(self) -> int:
        with self._lock:
            self._evict(self._clock())
            return len(self._data)

    def __contains__(self, sid: object) -> bool:
        with self._lock:
            self._evict(self._clock())
            return sid in self._data


def _error_page(code: int, message: str):
    import html
    body = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>WebShop error</title></head>"
            f"<body data-page=\"error\"><h1>Error {code}</h1><p id=\"error\">{html.escape(message)}</p></body></html>")
    return body, code, {"Content-Type": "text/html; charset=utf-8"}


def create_app(catalog: Catalog, *, default_split: str = "test", session_ttl: float = DEFAULT_SESSION_TTL,
               max_sessions: int = DEFAULT_MAX_SESSIONS):
    """A Flask app serving ``catalog``. Sessions: ``app.config["WEBSHOP_SESSIONS"]`` (a
    :class:`SessionStore` with the given idle ``session_ttl`` in seconds and ``max_sessions``)."""
    from flask import Flask, redirect, request

    app = Flask("hero_gym.webshop")
    shop = Shop(catalog)
    sessions = SessionStore(session_ttl, max_sessions)
    app.config["WEBSHOP_SESSIONS"] = sessions
    pick = random.Random()

    def session(sid: str) -> dict[str, Any] | None:
        if not _SID.match(sid):
            return None
        return sessions.get(sid)

    def page(sid: str, state: PageState, reward: float | None = None):
        sess = session(sid)
        if sess is None:
            return _error_page(404, f"Unknown or expired session {sid!r}: open /{sid}/start?goal=<goal id> "
                                    "or / first.")
        goal = catalog.goals[sess["goal_id"]]
        segs = shop.segments(state, goal.instruction, reward)
        return render_html(state, segs, sid, shop, reward), 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/healthz")
    def healthz():
        return "ok"

    @app.get("/favicon.ico")
    def favicon():
        return "", 204

    @app.get("/")
    def index():
        sid = uuid.uuid4().hex[:16]
        ids = catalog.splits.get(default_split) or list(range(len(catalog.goals)))
        if not ids:
            return _error_page(500, "The catalog has no goals.")
        return redirect(f"/{sid}/start?goal={pick.choice(ids)}")

    @app.get("/<sid>/start")
    def start(sid: str):
        if not _SID.match(sid):
            return _error_page(400, "A session id is 1-64 letters, digits, '-' or '_'.")
        try:
            gid = int(request.args.get("goal", "0"))
        except ValueError:
            return _error_page(400, "goal must be an integer goal id")
        if not 0 <= gid < len(catalog.goals):
            return _error_page(400, f"goal must be in 0..{len(catalog.goals) - 1}")
        sessions.start(sid, gid)
        return redirect(f"/{sid}/")

    @app.get("/<sid>/")
    def search_page(sid: str):
        return page(sid, PageState())

    def parse(kind: str, sid: str, asin: str = "", sub: str = ""):
        try:
            return state_from_url(kind, request.args, shop, asin, sub)
        except (KeyError, ValueError, IndexError):
            return None

    @app.get("/<sid>/results")
    def results(sid: str):
        if not request.args.get("q", "").strip():
            return page(sid, PageState())   # an empty search stays on the search page
        state = parse("results", sid)
        return page(sid, state) if state else _error_page(400, "malformed results URL")

    @app.get("/<sid>/item/<asin>")
    def item(sid: str, asin: str):
        state = parse("item", sid, asin)
        return page(sid, state) if state else _error_page(404, "no such product or option")

    @app.get("/<sid>/item/<asin>/<sub>")
    def item_sub(sid: str, asin: str, sub: str):
        state = parse("sub", sid, asin, sub)
        return page(sid, state) if state else _error_page(404, "no such page")

    @app.get("/<sid>/buy/<asin>")
    def buy(sid: str, asin: str):
        state = parse("done", sid, asin)
        sess = session(sid)
        if state is None:
            return _error_page(404, "no such product or option")
        if sess is None:
            return page(sid, state)
        goal = catalog.goals[sess["goal_id"]]
        reward, info = get_reward(goal, catalog.product(state.asin), dict(state.options))
        sessions.set_purchase(sid, info)
        return page(sid, state, reward)

    return app


class ShopServer:
    """The app on ``host`` (default 127.0.0.1; any other address prints a warning) and a free port,
    in a daemon thread. ``start()``/``stop()``, ``url``; ``session_ttl`` / ``max_sessions`` as in
    :func:`create_app`."""

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 0, *,
                 session_ttl: float = DEFAULT_SESSION_TTL, max_sessions: int = DEFAULT_MAX_SESSIONS):
        self.catalog = catalog
        self.host, self.port = host, port
        self.session_ttl, self.max_sessions = session_ttl, max_sessions
        self._server = None
        self._thread: threading.Thread | None = None
        self.app = None   # the Flask app while running (``app.config["WEBSHOP_SESSIONS"]``)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ShopServer:
        from werkzeug.serving import WSGIRequestHandler, make_server

        class _Quiet(WSGIRequestHandler):
            def log_request(self, *args, **kwargs):   # the env's server does not log every request
                pass

        if self.running:
            return self
        _warn_if_exposed(self.host)
        self.app = create_app(self.catalog, session_ttl=self.session_ttl, max_sessions=self.max_sessions)
        self._server = make_server(self.host, self.port, self.app, threaded=True, request_handler=_Quiet)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="webshop-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server, self._thread = None, None

    def __enter__(self) -> ShopServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(host: str = "127.0.0.1", port: int = 0, num_products: int = DEFAULT_NUM_PRODUCTS, seed: int = 0,
          data_dir: str | None = None, *, session_ttl: float = DEFAULT_SESSION_TTL,
          max_sessions: int = DEFAULT_MAX_SESSIONS) -> None:
    """Run the shop in the foreground until interrupted (``hero-gym webshop-serve``). Binds
    127.0.0.1 by default; any other ``host`` prints a warning to stderr first."""
    from werkzeug.serving import make_server

    _warn_if_exposed(host)
    catalog = get_catalog(num_products if data_dir is None else None, seed, data_dir)
    catalog.index  # build the index before the first request
    app = create_app(catalog, session_ttl=session_ttl, max_sessions=max_sessions)
    server = make_server(host, port, app, threaded=True)
    print(f"WebShop ({len(catalog.products)} products, {len(catalog.goals)} goals) at "
          f"http://{host}:{server.server_port}/  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
