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
"""

from __future__ import annotations

import random
import re
import threading
import uuid
from typing import Any

from .catalog import Catalog, get_catalog
from .pages import PageState, Shop, render_html, state_from_url
from .reward import get_reward

__all__ = ["create_app", "ShopServer", "serve"]

_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _error_page(code: int, message: str):
    import html
    body = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>WebShop error</title></head>"
            f"<body data-page=\"error\"><h1>Error {code}</h1><p id=\"error\">{html.escape(message)}</p></body></html>")
    return body, code, {"Content-Type": "text/html; charset=utf-8"}


def create_app(catalog: Catalog, *, default_split: str = "test"):
    """A Flask app serving ``catalog``. Sessions: ``app.config["WEBSHOP_SESSIONS"]`` (sid -> dict)."""
    from flask import Flask, redirect, request

    app = Flask("hero_gym.webshop")
    shop = Shop(catalog)
    sessions: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    app.config["WEBSHOP_SESSIONS"] = sessions
    pick = random.Random()

    def session(sid: str) -> dict[str, Any] | None:
        if not _SID.match(sid):
            return None
        with lock:
            return sessions.get(sid)

    def page(sid: str, state: PageState, reward: float | None = None):
        sess = session(sid)
        if sess is None:
            return _error_page(404, f"Unknown session {sid!r}: open /{sid}/start?goal=<goal id> or / first.")
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
        with lock:
            sessions[sid] = {"goal_id": gid, "purchase": None}
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
        with lock:
            sess["purchase"] = info
        return page(sid, state, reward)

    return app


class ShopServer:
    """The app on ``host`` and a free port, in a daemon thread. ``start()``/``stop()``, ``url``."""

    def __init__(self, catalog: Catalog, host: str = "127.0.0.1", port: int = 0):
        self.catalog = catalog
        self.host, self.port = host, port
        self._server = None
        self._thread: threading.Thread | None = None

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
        self._server = make_server(self.host, self.port, create_app(self.catalog), threaded=True,
                                   request_handler=_Quiet)
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


def serve(host: str = "127.0.0.1", port: int = 0, num_products: int = 1000, seed: int = 0,
          data_dir: str | None = None) -> None:
    """Run the shop in the foreground until interrupted (``hero-gym webshop-serve``)."""
    from werkzeug.serving import make_server

    catalog = get_catalog(num_products if data_dir is None else None, seed, data_dir)
    catalog.index  # build the index before the first request
    server = make_server(host, port, create_app(catalog), threaded=True)
    print(f"WebShop ({len(catalog.products)} products, {len(catalog.goals)} goals) at "
          f"http://{host}:{server.server_port}/  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
