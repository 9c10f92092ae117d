"""The HTTP shop: real requests on 127.0.0.1, sessions in the URL, escaping, same pages as the env."""

import html
import re
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from urllib.parse import quote

import pytest

from hero_gym.envs.webshop.catalog import get_catalog
from hero_gym.envs.webshop.env import WebShopEnv
from hero_gym.envs.webshop.server import ShopServer


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
