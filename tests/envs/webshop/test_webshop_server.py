"""The HTTP shop: real requests on 127.0.0.1, sessions in the URL, escaping, same pages as the env;
session isolation and expiry, the loopback default and the warning for any other address."""

import html
import re
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from hero_gym.envs.webshop.catalog import get_catalog
from hero_gym.envs.webshop.env import WebShopEnv
from hero_gym.envs.webshop.server import SessionStore, ShopServer, _warn_if_exposed, is_loopback


class Segs(HTMLParser):
    """Collects the text of class="seg" elements and the links of buttons."""

    def __init__(self):
        super().__init__()
        self.segs, self.links, self._cur, self._href = [], {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "seg" in (a.get("class") or "").split():
            self._cur, self._href = [], a.get("href")

    def handle_data(self, data):
        if self._cur is not None:
            self._cur.append(data)

    def handle_endtag(self, tag):
        if self._cur is not None and tag in ("span", "a", "button"):
            text = " ".join("".join(self._cur).split())
            self.segs.append(text)
            if self._href:
                self.links[text.lower()] = self._href
            self._cur = None


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server():
    s = ShopServer(get_catalog(1000, 0)).start()
    yield s
    s.stop()
    assert not s.running


def parse(body):
    p = Segs()
    p.feed(body)
    return p


def test_binds_loopback_free_port(server):
    assert server.host == "127.0.0.1" and server.port > 0
    assert get(server.url + "/healthz") == (200, "ok")


def test_pages_match_the_text_env(server):
    """Following the links of the served HTML gives the text env's observations."""
    env = WebShopEnv(split="test")
    cat = env.catalog
    for task_index in range(3):
        obs, info = env.reset(options={"task_index": task_index})
        g = env.goal
        status, body = get(f"{server.url}/s{task_index}/start?goal={g.goal_id}")
        assert status == 200 and render_text_segs(body) == obs
        q = quote(g.instruction)
        status, body = get(f"{server.url}/s{task_index}/results?q={q}&page=1")
        obs, *_ = env.step(f"search[{g.instruction}]")
        assert render_text_segs(body) == obs
        actions = [g.asin.lower()] + [v for _, v in g.options] + ["features", "< prev", "buy now"]
        if g.asin not in cat.index.search(g.instruction)[:10]:
            continue
        for a in actions:
            link = parse(body).links[a]
            status, body = get(server.url + html.unescape(link))
            obs, r, term, *_ = env.step(f"click[{a}]")
            assert status == 200 and render_text_segs(body) == obs
        assert term and f'data-reward="{r!r}"' in body


def render_text_segs(body):
    return " [SEP] ".join(parse(body).segs)


def test_xss_is_escaped(server):
    get(f"{server.url}/x1/start?goal=0")
    payload = "<script>alert(1)</script>"
    status, body = get(f"{server.url}/x1/results?q={quote(payload)}&page=1")
    assert status == 200
    assert payload not in body and "<script" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    attr = quote('"><img src=x onerror=alert(1)>')
    status, body = get(f"{server.url}/x1/results?q={attr}&page=1")
    assert "<img" not in body and "onerror=alert(1)&gt;" in body


def test_sessions_are_independent_and_concurrent(server):
    cat = get_catalog(1000, 0)
    errors = []

    def worker(k):
        try:
            sid = f"c{k}"
            gid = cat.splits["test"][k]
            assert get(f"{server.url}/{sid}/start?goal={gid}")[0] == 200
            for _ in range(3):
                status, body = get(f"{server.url}/{sid}/")
                assert cat.goals[gid].instruction in html.unescape(body)
        except Exception as e:   # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_bad_requests_are_4xx(server):
    assert get(f"{server.url}/nosuchsession/")[0] == 404
    assert get(f"{server.url}/bad!sid/start?goal=0")[0] in (400, 404)
    assert get(f"{server.url}/z1/start?goal=999999")[0] == 400
    assert get(f"{server.url}/z1/start?goal=abc")[0] == 400
    get(f"{server.url}/z1/start?goal=0")
    assert get(f"{server.url}/z1/item/NOTANASIN?q=a&page=1")[0] == 404
    assert get(f"{server.url}/z1/item/{get_catalog(1000, 0).products[0].asin}?q=a&page=x")[0] == 404
    assert get(f"{server.url}/z1/item/{get_catalog(1000, 0).products[0].asin}/secret?q=a&page=1")[0] == 404
    status, body = get(f"{server.url}/z1/results?q=&page=1")
    assert status == 200 and 'id="search_input"' in body
    status, body = get(server.url + "/")
    assert status == 200 and re.search(r'action="/[0-9a-f]{16}/results"', body)


def test_no_scripts_or_external_assets(server):
    get(f"{server.url}/n1/start?goal=0")
    _, body = get(f"{server.url}/n1/results?q=shampoo&page=1")
    assert "<script" not in body and "http://" not in body and "https://" not in body


def test_serve_runs_standalone():
    """``serve()`` (behind ``hero-gym webshop-serve``) binds 127.0.0.1, picks a free port, serves."""
    import subprocess
    import sys

    code = "from hero_gym.envs.webshop.server import serve; serve(port=0, num_products=100, seed=1)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
        assert m, line
        assert get(m.group(1) + "/healthz") == (200, "ok")
        status, body = get(m.group(1) + "/")
        assert status == 200 and 'id="search_input"' in body
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- sessions: isolation and expiry
class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_session_store_expires_idle_sessions_and_keeps_used_ones():
    clock = FakeClock()
    store = SessionStore(ttl=60, clock=clock)
    store.start("a", 1)
    store.start("b", 2)
    clock.t += 40
    assert store.get("a") == {"goal_id": 1, "purchase": None}   # using "a" refreshes it
    clock.t += 30                                                # b idle 70 s, a idle 30 s
    assert store.get("b") is None and "b" not in store
    assert store.get("a")["goal_id"] == 1 and len(store) == 1 and store.expired == 1
    clock.t += 61
    assert len(store) == 0 and store.expired == 2


def test_session_store_is_bounded_least_recently_used_first():
    store = SessionStore(ttl=1e9, max_sessions=3, clock=FakeClock())
    for k in range(3):
        store.start(f"s{k}", k)
    store.get("s0")                       # s1 is now the least recently used
    store.start("s3", 3)
    assert "s1" not in store and all(f"s{k}" in store for k in (0, 2, 3)) and len(store) == 3


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"ttl": -5}, {"max_sessions": 0}])
def test_session_store_rejects_bad_limits(kwargs):
    with pytest.raises(ValueError, match="ttl|max_sessions"):
        SessionStore(**kwargs)


def test_sessions_are_isolated(server):
    """Interleaved sessions on different goals: each page shows its own instruction, a purchase is
    recorded only in its own session, restarting one leaves the other as it was."""
    cat = get_catalog(1000, 0)
    ga, gb = cat.goals[cat.splits["test"][0]], cat.goals[cat.splits["test"][1]]
    assert ga.instruction != gb.instruction
    get(f"{server.url}/iso-a/start?goal={ga.goal_id}")
    get(f"{server.url}/iso-b/start?goal={gb.goal_id}")
    asin = ga.asin
    for sid, goal, other in (("iso-a", ga, gb), ("iso-b", gb, ga), ("iso-a", ga, gb)):
        _, body = get(f"{server.url}/{sid}/results?q={quote(goal.instruction)}&page=1")
        text = html.unescape(body)
        assert goal.instruction in text and other.instruction not in text
    status, body = get(f"{server.url}/iso-a/buy/{asin}?q=x&page=1")
    assert status == 200 and "data-reward=" in body
    sessions = server.app.config["WEBSHOP_SESSIONS"]
    assert sessions.get("iso-a")["purchase"] is not None and sessions.get("iso-b")["purchase"] is None
    get(f"{server.url}/iso-a/start?goal={gb.goal_id}")       # restart a on b's goal
    assert sessions.get("iso-a") == {"goal_id": gb.goal_id, "purchase": None}
    assert sessions.get("iso-b")["goal_id"] == gb.goal_id
    _, body = get(f"{server.url}/iso-b/")
    assert gb.instruction in html.unescape(body)


def test_idle_sessions_expire_on_a_live_server():
    with ShopServer(get_catalog(100, 1), session_ttl=0.5) as s:
        assert get(f"{s.url}/old/start?goal=0")[0] == 200
        get(f"{s.url}/busy/start?goal=1")
        for _ in range(4):                 # "busy" is used every 0.2 s, "old" never again
            time.sleep(0.2)
            assert get(f"{s.url}/busy/")[0] == 200
        status, body = get(f"{s.url}/old/")
        assert status == 404 and "expired session" in body
        assert "old" not in s.app.config["WEBSHOP_SESSIONS"]
        assert get(f"{s.url}/old/start?goal=0")[0] == 200   # it can be started again


# ---------------------------------------------------------------- binding
def test_loopback_detection():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", ""))


def test_binding_elsewhere_prints_a_warning(capsys):
    _warn_if_exposed("127.0.0.1")
    assert capsys.readouterr().err == ""
    _warn_if_exposed("0.0.0.0")
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and "127.0.0.1" in err and "no authentication" in err
