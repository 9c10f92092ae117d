"""``hero_gym/WebShopBrowser-v0``: WebShop in a real headless Chromium driven by selenium 4.

The env starts the shop's HTTP server (:class:`~hero_gym.envs.webshop.server.ShopServer`, one per
catalog per process, shared by reference count) and one headless Chromium per env instance. Actions
are carried out the way a person would: ``search[q]`` types ``q`` into the real search box and
clicks the Search button; ``click[x]`` clicks the DOM element whose text is ``x``. The observation
is read back from the live DOM (the elements of class ``seg``, in document order) and rendered
exactly like the text mode, so the same action sequence gives the same observations and rewards in
both (tested). In ``html`` mode the observation is the browser's ``page_source``. The reward is
read from the done page (``data-reward``); its breakdown is recomputed from the purchase URL.

Browser: Debian ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``; override with ``chromium_path`` / ``chromedriver_path`` or the
``HERO_GYM_CHROMIUM`` / ``HERO_GYM_CHROMEDRIVER`` variables), headless with a fresh profile
directory.

Faults: every WebDriver call is bounded (page loads and scripts by ``timeout``, each HTTP command
to chromedriver by ``timeout + 10`` s, the wait for a navigation by ``timeout``), so a crashed or
hung browser never blocks a step. When a step's browser work fails, the env kills chromedriver and
every browser process at once (no graceful quit, which a hung browser would stall), starts a fresh
browser, reopens the page the agent was on (the page state is in the URL), and reports the step as
failed: an ``Error:`` observation, ``info["action_error"] = {"kind": "browser", ...}`` and
``info["browser_error"]``; the episode goes on and the agent may retry. Only if the restart fails
too does the episode end (``terminated``, reward 0); the next ``reset`` tries again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from hero_gym.core import StepResult, TextMessage
from .catalog import Catalog, clean
from .env import WebShopBase
from .pages import state_from_url
from .reward import get_reward
from .server import ShopServer
from hero_gym.tools import ToolCall

__all__ = ["WebShopBrowserEnv", "BrowserUnavailable", "find_browser", "acquire_server", "release_server"]

CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               "--window-size=1280,1024"]

_READ_DOM = """
const segs = [];
for (const e of document.querySelectorAll('.seg')) segs.push([e.textContent, e.dataset.kind || 'text']);
const b = document.body;
return {segs: segs, page: b ? (b.dataset.page || null) : null, reward: b ? (b.dataset.reward || null) : null,
        search: !!document.getElementById('search_input'), url: location.href,
        error: document.getElementById('error') ? document.getElementById('error').textContent : null};
"""

_FIND_BUTTON = """
const t = arguments[0];
for (const e of document.querySelectorAll('.seg.btn:not(#search_button)')) {
  if (e.textContent.replace(/\\s+/g, ' ').trim().toLowerCase() === t) return e;
}
return null;
"""


#: fresh browsers tried after a failed step before the episode ends (see ``WebShopBrowserEnv._failure``)
RESTART_ATTEMPTS = 2


class BrowserUnavailable(RuntimeError):
    """Chromium or chromedriver is not installed (or cannot start)."""


def find_browser(chromium_path: str | None = None, chromedriver_path: str | None = None) -> tuple[str, str]:
    """Paths of chromium and chromedriver; raises :class:`BrowserUnavailable` if either is missing."""
    chromium = chromium_path or os.environ.get("HERO_GYM_CHROMIUM") or "/usr/bin/chromium"
    driver = chromedriver_path or os.environ.get("HERO_GYM_CHROMEDRIVER") or "/usr/bin/chromedriver"
    chromium = chromium if os.path.exists(chromium) else (shutil.which("chromium") or shutil.which("chromium-browser"))
    driver = driver if os.path.exists(driver) else shutil.which("chromedriver")
    if not chromium or not driver:
        raise BrowserUnavailable("WebShopBrowser needs Chromium and chromedriver: apt-get install chromium "
                                 "chromium-driver (or set HERO_GYM_CHROMIUM / HERO_GYM_CHROMEDRIVER)")
    return chromium, driver


# ----------------------------------------------------------------------------- shared servers
_SERVERS: dict[int, list[Any]] = {}   # id(catalog) -> [ShopServer, refcount]
_SERVERS_LOCK = threading.Lock()


def acquire_server(catalog: Catalog) -> ShopServer:
    """The process's server for ``catalog`` (started on first use); pair with :func:`release_server`."""
    with _SERVERS_LOCK:
        entry = _SERVERS.get(id(catalog))
        if entry is None or not entry[0].running:
            catalog.index  # build before serving
            entry = [ShopServer(catalog).start(), 0]
            _SERVERS[id(catalog)] = entry
        entry[1] += 1
        return entry[0]


def release_server(catalog: Catalog) -> None:
    """Drop one reference; the last one stops the server."""
    with _SERVERS_LOCK:
        entry = _SERVERS.get(id(catalog))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].stop()
            del _SERVERS[id(catalog)]


class WebShopBrowserEnv(WebShopBase):
    """WebShop through a real browser. Same arguments as :class:`~hero_gym.envs.webshop.env.WebShopEnv`
    plus ``chromium_path``, ``chromedriver_path``, ``timeout`` (seconds for a page load or a browser
    command, default 20) and ``headless`` (default True)."""

    def __init__(self, *, chromium_path: str | None = None, chromedriver_path: str | None = None,
                 timeout: float = 20.0, headless: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.chromium_path, self.chromedriver_path = find_browser(chromium_path, chromedriver_path)
        self.timeout = float(timeout)
        self.headless = headless
        self._driver = None
        self._profile_dir: str | None = None
        self._server: ShopServer | None = None
        self._sid = ""
        self._dom: dict[str, Any] = {}
        self.browser_restarts = 0

    # ------------------------------------------------------------------ browser lifecycle
    def _start_browser(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._stop_browser()
        opts = webdriver.ChromeOptions()
        opts.binary_location = self.chromium_path
        opts.page_load_strategy = "eager"   # pages have no sub-resources; _navigate waits for the DOM
        self._profile_dir = tempfile.mkdtemp(prefix="hero-gym-chromium-")
        for arg in CHROME_ARGS:
            if arg.startswith("--headless") and not self.headless:
                continue
            opts.add_argument(arg)
        opts.add_argument(f"--user-data-dir={self._profile_dir}")
        try:
            driver = webdriver.Chrome(options=opts, service=Service(self.chromedriver_path))
        except Exception as e:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None
            raise BrowserUnavailable(f"could not start Chromium: {type(e).__name__}: {e}") from e
        try:
            driver.command_executor._client_config.timeout = self.timeout + 10   # no hanging HTTP calls
        except AttributeError:  # pragma: no cover - older selenium
            pass
        driver.set_page_load_timeout(self.timeout)
        driver.set_script_timeout(self.timeout)
        self._driver = driver

    def _stop_browser(self, graceful: bool = True) -> None:
        """Stop chromedriver and the browser. ``graceful`` first asks chromedriver to quit (bounded by
        the command time-out); in any case every process of the tree still alive is then killed, so
        no browser outlives its env. ``graceful=False`` (after a fault) kills at once."""
        pids = self.browser_pids()
        driver, self._driver = self._driver, None
        if driver is not None and graceful:
            try:
                driver.quit()
            except Exception:   # noqa: BLE001 - the browser is already gone; killed below
                pass
        _kill(pids)
        if driver is not None:
            try:
                driver.service.stop()   # the process is dead by now: this only closes its pipes
            except Exception:   # noqa: BLE001
                pass
        if self._profile_dir:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None

    def browser_pids(self) -> list[int]:
        """Process ids of this env's chromedriver and its browser processes (for tests/diagnostics)."""
        if self._driver is None:
            return []
        import psutil
        try:
            root = psutil.Process(self._driver.service.process.pid)
            return [root.pid] + [p.pid for p in root.children(recursive=True)]
        except (psutil.Error, AttributeError):
            return []

    def open_resources(self) -> list[str]:
        out = []
        if self._driver is not None:
            out.append("chromium")
        if self._server is not None:
            out.append("webshop-server")
        return out

    def _close(self) -> None:
        self._stop_browser()
        if self._server is not None:
            release_server(self.catalog)
            self._server = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            self._server = acquire_server(self.catalog)
        return self._server.url

    def _page_kind(self) -> str | None:
        return self._dom.get("page")

    # ------------------------------------------------------------------ DOM
    def _read(self) -> str:
        dom = self._driver.execute_script(_READ_DOM)
        if dom.get("page") in (None, "error"):
            raise RuntimeError(f"unexpected page at {dom.get('url')}: {dom.get('error')}")
        segs = [(clean(t), k) for t, k in dom["segs"]]
        clickables: list[str] = []
        if dom["page"] not in ("search", "done"):
            for text, kind in segs:
                low = text.lower()
                if kind in ("button", "selected") and low not in clickables:
                    clickables.append(low)
        self._available = {"has_search_bar": bool(dom["search"]), "clickables": clickables}
        self._dom = {**dom, "segs": segs}
        text = self._render_text_mode(segs)
        return text if text is not None else self._driver.page_source

    def _navigate(self, do) -> None:
        """Run ``do()`` (a click that submits or follows a link) and wait until the next document
        has loaded. The old document is marked with a window property that the new one lacks."""
        import time

        from selenium.common.exceptions import WebDriverException

        self._driver.execute_script("window.__heroGymOld = true;")
        do()
        deadline = time.monotonic() + self.timeout
        transient = 0
        while True:
            try:
                if self._driver.execute_script(
                        "return !window.__heroGymOld && document.readyState === 'complete';"):
                    return
                transient = 0
            except WebDriverException:
                # a script can race with the navigation ("no such execution context", "node does not
                # belong to the document"); a dead browser keeps failing and is reported below
                transient += 1
                if transient > 50:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page did not load within {self.timeout:.0f} s")
            time.sleep(0.005)

    def _failure(self, err: Exception) -> StepResult:
        """The browser failed during a step: kill it, start a new one on the page the agent was on
        and report the step as failed; end the episode only if ``RESTART_ATTEMPTS`` restarts fail too
        (each bounded by the command time-outs; a fresh Chromium on a busy CPU can miss one)."""
        msg = _one_line(err)
        last_url = self._dom.get("url")
        why = "no page to return to"
        for _ in range(RESTART_ATTEMPTS if last_url else 0):
            self._stop_browser(graceful=False)
            self._available = {"has_search_bar": False, "clickables": []}
            try:
                self._start_browser()
                self.browser_restarts += 1
                self._driver.get(last_url)
                self._read()
                break
            except Exception as again:   # noqa: BLE001 - try once more, then end the episode cleanly
                why = _one_line(again)
        else:
            self._stop_browser(graceful=False)
            self._available = {"has_search_bar": False, "clickables": []}
            return StepResult(observation=f"Error: the browser failed ({msg}) and could not be restarted ({why}). "
                                          "The episode ends; reset to start a new browser.", terminated=True,
                              info={"browser_error": msg, "page": None, **self._page_info()})
        message = (f"the browser failed ({msg}) and was restarted on the same page; the action was not "
                   "carried out: try it again.")
        return StepResult(observation=f"Error: {message}",
                          info={"browser_error": msg, "action_error": {"kind": "browser", "message": message},
                                "page": self._dom.get("page"), **self._page_info()})

    # ------------------------------------------------------------------ episode
    def _reset(self, *, seed: int | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.goal, index = self._pick_goal(options)
        url = self.base_url
        last: Exception | None = None
        for _ in range(2):   # a dead browser is restarted once
            try:
                if self._driver is None:
                    self._start_browser()
                    self.browser_restarts += 1
                self._sid = self._sid or uuid.uuid4().hex[:16]   # one server session per env, restarted
                self._driver.get(f"{url}/{self._sid}/start?goal={self.goal.goal_id}")
                obs = self._read()
                break
            except BrowserUnavailable:
                raise
            except Exception as e:   # noqa: BLE001 - any browser failure: restart
                last = e
                self._stop_browser()
        else:
            raise BrowserUnavailable(f"the browser failed twice on reset: {last}")
        return obs, {**self._task_info(self.goal, index), **self._page_info(), "page": self._dom["page"]}

    def _step(self, action: ToolCall | TextMessage) -> StepResult:
        checked = self._check(action)
        if isinstance(checked, StepResult):
            checked.info["page"] = self._dom.get("page")
            return checked
        kind, arg = checked
        if self._driver is None:
            return self._failure(RuntimeError("the browser is not running"))
        from selenium.webdriver.common.by import By

        try:
            if kind == "search":
                box = self._driver.find_element(By.ID, "search_input")
                box.clear()
                box.send_keys(arg)
                button = self._driver.find_element(By.ID, "search_button")
                self._navigate(button.click)
            else:
                element = self._driver.execute_script(_FIND_BUTTON, arg)
                if element is None:   # the page and our clickables disagree: should not happen
                    raise RuntimeError(f"button {arg!r} not found in the DOM")
                self._navigate(element.click)
            obs = self._read()
        except Exception as e:   # noqa: BLE001 - crashed/hung browser: report, don't hang or raise
            return self._failure(e)
        page = self._dom["page"]
        if page == "done":
            reward = float(self._dom["reward"])
            parts = urlsplit(self._dom["url"])
            asin = parts.path.rstrip("/").split("/")[-1]
            state = state_from_url("done", _Args(parse_qs(parts.query)), self.shop, asin)
            _, breakdown = get_reward(self.goal, self.catalog.product(state.asin), dict(state.options))
            self._available = {"has_search_bar": False, "clickables": []}
            return StepResult(obs, reward=reward, terminated=True,
                              info={**self._page_info(), "page": "done", **self._purchase_info(reward, breakdown)})
        return StepResult(obs, info={**self._page_info(), "page": page})


def _one_line(err: BaseException) -> str:
    """``"TimeoutException: first line of the message"`` (WebDriver messages run to many lines)."""
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def _kill(pids: list[int]) -> None:
    """SIGKILL the given processes (also stopped ones); already gone is fine."""
    if not pids:
        return
    import psutil

    procs = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.kill()
            procs.append(p)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


class _Args:
    """``request.args``-like view of ``parse_qs`` output."""

    def __init__(self, qs: dict[str, list[str]]):
        self.qs = qs

    def get(self, key: str, default: str = "") -> str:
        return self.qs.get(key, [default])[0]

    def getlist(self, key: str) -> list[str]:
        return self.qs.get(key, [])
