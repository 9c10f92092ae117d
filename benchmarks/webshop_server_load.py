"""Load test of the WebShop HTTP server (``hero-gym webshop-serve``), loopback only.

    python benchmarks/webshop_server_load.py [--sessions 16] [--requests 10000] [--time-limit 300]

Starts ``hero-gym webshop-serve --host 127.0.0.1 --port 0`` as a child process (or uses ``--url`` of
a server already running on a loopback address; any other address is refused), then ``--sessions``
client threads each play shopping episodes as fast as they can, each on a fresh session id: start
(a redirect), search page, results for the goal's instruction, the first product, its first option,
the description, buy. Every page must show the session's own instruction (a session-isolation
check; a page with another session's goal counts as an isolation error). Stops after ``--requests``
requests or ``--time-limit`` seconds, whichever comes first.

Prints: requests/s, p50/p99 latency, errors (HTTP >= 400, exceptions, isolation), the server's
resident memory after a warm-up of ``--warmup`` requests and at the end (growth), and the live
session count implied by the episodes started.
"""

from __future__ import annotations

import argparse
import html
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import psutil

from hero_gym.envs.webshop.catalog import get_catalog
from hero_gym.envs.webshop.server import is_loopback

_HREF = re.compile(r'<a class="seg btn[^"]*" data-kind="(?:button|selected)" href="([^"#]+)">([^<]*)</a>')


class Stats:
    def __init__(self, limit: int, deadline: float):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.limit, self.deadline = limit, deadline
        self.episodes = 0
        self.issued = 0

    def take(self) -> bool:
        """Reserve one request; False when the count or time budget is used up."""
        with self.lock:
            if self.issued >= self.limit or time.monotonic() >= self.deadline:
                return False
            self.issued += 1
            return True

    def record(self, seconds: float, error: str | None = None) -> None:
        with self.lock:
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1
            else:
                self.latencies.append(seconds)


def _get(host: str, port: int, path: str, stats: Stats) -> tuple[int, str, str]:
    """One GET on a new connection; returns (status, body, location). Raises StopIteration when the
    budget is used up."""
    if not stats.take():
        raise StopIteration
    t = time.perf_counter()
    try:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        location = resp.getheader("Location") or ""
        conn.close()
    except Exception as e:   # noqa: BLE001 - counted, the run goes on
        stats.record(0.0, f"exception:{type(e).__name__}")
        return 0, "", ""
    dt = time.perf_counter() - t
    stats.record(dt, f"http_{resp.status}" if resp.status >= 400 else None)
    return resp.status, body, location


def _client(k: int, host: str, port: int, goals: list[tuple[int, str]], stats: Stats) -> None:
    episode = 0
    try:
        while True:
            gid, instruction = goals[(k * 7919 + episode) % len(goals)]
            sid = f"load{k}-{episode}"
            episode += 1
            with stats.lock:
                stats.episodes += 1
            own = html.escape(instruction)
            status, _, location = _get(host, port, f"/{sid}/start?goal={gid}", stats)
            if status != 302:
                continue
            path = urlsplit(location).path or f"/{sid}/"
            status, body, _ = _get(host, port, path, stats)
            steps = [f"/{sid}/results?q={quote(instruction)}&page=1"]
            while steps:
                status, body, _ = _get(host, port, steps.pop(0), stats)
                if status != 200:
                    break
                page = re.search(r'data-page="(\w+)"', body)
                kind = page.group(1) if page else ""
                if kind != "done" and own not in body:   # the done page shows the purchase, not the goal
                    stats.record(0.0, "isolation")   # not a request: counted as an error only
                    break
                links = {html.unescape(text).strip().lower(): html.unescape(href) for href, text in _HREF.findall(body)}
                if kind == "results":
                    products = [h for t, h in links.items() if "/item/" in h]
                    if products:
                        steps.append(products[0])
                elif kind == "item" and not steps:
                    options = [h for t, h in links.items()
                               if t not in ("back to search", "< prev", "description", "features", "reviews",
                                            "buy now")]
                    steps += options[:1] + [links["description"], links["buy now"]]
    except StopIteration:
        return


def _start_server(num_products: int) -> tuple[subprocess.Popen, str]:
    exe = Path(sys.executable).with_name("hero-gym")
    cmd = [str(exe)] if exe.exists() else [shutil.which("hero-gym") or "hero-gym"]
    cmd += ["webshop-serve", "--host", "127.0.0.1", "--port", "0", "--num-products", str(num_products)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, m.group(1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=16, help="concurrent client sessions (1..256)")
    ap.add_argument("--requests", type=int, default=10_000, help="total requests (at most 100,000)")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds (at most 1800)")
    ap.add_argument("--warmup", type=int, default=500, help="requests before the first memory reading")
    ap.add_argument("--num-products", type=int, default=1000)
    ap.add_argument("--url", help="an already running server on a loopback address (default: start one)")
    args = ap.parse_args(argv)
    if not 1 <= args.sessions <= 256 or not 1 <= args.requests <= 100_000 or not 0 < args.time_limit <= 1800:
        ap.error("bounded runs only: 1..256 sessions, 1..100,000 requests, time limit 0..1800 s")

    proc = None
    if args.url:
        host = urlsplit(args.url).hostname or ""
        if not is_loopback(host):
            ap.error(f"loopback only: {host!r} is not a loopback address")
        url, server_pid = args.url.rstrip("/"), None
    else:
        proc, url = _start_server(args.num_products)
        server_pid = proc.pid
    parts = urlsplit(url)
    catalog = get_catalog(args.num_products, 0)
    goals = [(g.goal_id, g.instruction) for g in catalog.goals]
    server = psutil.Process(server_pid) if server_pid else None

    try:
        stats = Stats(args.warmup, time.monotonic() + args.time_limit)
        t0 = time.monotonic()
        threads = [threading.Thread(target=_client, args=(k, parts.hostname, parts.port, goals, stats), daemon=True)
                   for k in range(args.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rss_warm = server.memory_info().rss if server else None
        warm_requests = len(stats.latencies) + sum(stats.errors.values())
        stats.limit = args.requests
        t1 = time.monotonic()
        stats.latencies.clear()
        stats.errors.clear()
        stats.episodes = stats.issued = 0
        threads = [threading.Thread(target=_client, args=(k + 1000, parts.hostname, parts.port, goals, stats),
                                    daemon=True) for k in range(args.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t1
        rss_end = server.memory_info().rss if server else None
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    lat = sorted(stats.latencies)
    n = stats.issued
    q = (lambda p: 1000 * lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))]) if lat else (lambda p: float("nan"))
    out = {"url": url, "sessions": args.sessions, "requests": n, "seconds": wall, "rps": n / wall if wall else 0.0,
           "p50_ms": q(0.5), "p99_ms": q(0.99), "mean_ms": 1000 * statistics.fmean(lat) if lat else float("nan"),
           "errors": dict(stats.errors), "episodes": stats.episodes, "warmup_requests": warm_requests,
           "warmup_seconds": t1 - t0, "rss_warm_mb": rss_warm / 2**20 if rss_warm else None,
           "rss_end_mb": rss_end / 2**20 if rss_end else None}
    print(f"server {url} (pid {server_pid or 'external'}), {args.sessions} concurrent sessions, loopback only")
    print(f"requests        {n:,} in {wall:.1f} s  (after {warm_requests} warm-up requests)")
    print(f"throughput      {out['rps']:.0f} requests/s")
    print(f"latency         p50 {out['p50_ms']:.2f} ms   p99 {out['p99_ms']:.2f} ms   mean {out['mean_ms']:.2f} ms")
    print(f"errors          {sum(stats.errors.values())} {stats.errors or ''}")
    print(f"episodes        {stats.episodes:,} (one new session each)")
    if rss_warm:
        print(f"server memory   {out['rss_warm_mb']:.1f} MB after warm-up -> {out['rss_end_mb']:.1f} MB after "
              f"{n:,} requests (growth {out['rss_end_mb'] - out['rss_warm_mb']:+.1f} MB)")
    return out


if __name__ == "__main__":
    main()
