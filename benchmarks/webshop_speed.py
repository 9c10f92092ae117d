"""WebShop speed benchmark: catalog generation and index build (10k and 100k products), search and
step latency, memory per extra env instance, and (if Chromium is installed) browser step latency.

``main_rows()`` returns rows ``{"benchmark", "p50_ms", "p95_ms", ...}``; ``benchmarks/env_speed.py``
collects them. Run alone: ``python benchmarks/webshop_speed.py [--quick] [--no-browser]``.
Targets (10k products): search p50 <= 5 ms, text step p50 <= 2 ms, <= 5 MB per extra env.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
import tracemalloc

from hero_gym.envs.webshop.catalog import _CACHE, generate_catalog
from hero_gym.envs.webshop.env import WebShopEnv
from hero_gym.envs.webshop.expert import ExpertAgent, RandomAgent, run_episode


class _Timed:
    """Wraps an env and records ``(action, seconds)`` for every ``step`` (resets are timed apart)."""

    def __init__(self, env) -> None:
        self.env, self.steps, self.resets = env, [], []

    def reset(self, **kwargs):
        t = time.perf_counter()
        out = self.env.reset(**kwargs)
        self.resets.append(time.perf_counter() - t)
        return out

    def step(self, action):
        t = time.perf_counter()
        out = self.env.step(action)
        self.steps.append((action, time.perf_counter() - t))
        return out


def _play(env, episodes: int, task_index=lambda k: k) -> _Timed:
    """Alternate expert and random episodes through the expert module's ``run_episode``, timed."""
    timed = _Timed(env)
    for k in range(episodes):
        agent = ExpertAgent() if k % 2 == 0 else RandomAgent(k)
        run_episode(timed, agent, options={"task_index": task_index(k)})
    return timed


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def _row(name: str, samples_s: list[float], **extra) -> dict:
    ms = [x * 1000 for x in samples_s]
    return {"benchmark": name, "p50_ms": round(_pct(ms, 0.5), 4), "p95_ms": round(_pct(ms, 0.95), 4),
            "n": len(ms), **extra}


def _build(n: int) -> tuple[dict, dict, object]:
    t = time.perf_counter()
    cat = generate_catalog(n, seed=0)
    gen = time.perf_counter() - t
    t = time.perf_counter()
    cat.index
    idx = time.perf_counter() - t
    return (_row(f"webshop catalog generation ({n // 1000}k products)", [gen]),
            _row(f"webshop BM25 index build ({n // 1000}k products)", [idx]), cat)


def _search_rows(cat, label: str, n_queries: int) -> dict:
    rng = random.Random(0)
    queries = [g.instruction for g in cat.goals[:n_queries // 2]]
    words = " ".join(p.title for p in cat.products[:200]).lower().split()
    queries += [" ".join(rng.sample(words, rng.randint(1, 5))) + f" {i}" for i in range(n_queries - len(queries))]
    times = []
    for q in queries:   # distinct queries: the LRU cache never hits
        t = time.perf_counter()
        cat.index.search(q)
        times.append(time.perf_counter() - t)
    return _row(f"webshop search, uncached ({label})", times)


def _step_rows(cat, label: str, episodes: int) -> list[dict]:
    env = WebShopEnv(catalog=cat, split="test")
    timed = _play(env, episodes, task_index=lambda k: k % env.num_tasks())
    step_all = [dt for _, dt in timed.steps]
    step_click = [dt for action, dt in timed.steps if action.startswith("click[")]
    return [_row(f"webshop text step, all actions incl. uncached searches ({label})", step_all),
            _row(f"webshop text step, clicks ({label})", step_click)]


def _memory_row(cat, n_envs: int = 40) -> dict:
    first = WebShopEnv(catalog=cat, split="test")
    first.reset(seed=0)
    first.step("search[shampoo]")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    envs = []
    for k in range(n_envs):
        e = WebShopEnv(catalog=cat, split="test")
        e.reset(seed=k)
        e.step("search[shampoo]")
        envs.append(e)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per = (after - before) / n_envs / 1e6
    return {"benchmark": "webshop memory per extra env instance (10k catalog, after reset + search)",
            "p50_ms": None, "p95_ms": None, "mb_per_env": round(per, 4), "n": n_envs}


def _browser_rows(episodes: int) -> list[dict]:
    from hero_gym.envs.webshop.browser import BrowserUnavailable, WebShopBrowserEnv

    try:
        t = time.perf_counter()
        env = WebShopBrowserEnv(split="test")
        obs, info = env.reset(options={"task_index": 0})
        start = time.perf_counter() - t
    except BrowserUnavailable as e:
        return [{"benchmark": "webshop browser step", "p50_ms": None, "p95_ms": None, "skipped": str(e)}]
    try:
        timed = _play(env, episodes)
    finally:
        env.close()
    steps, resets = [dt for _, dt in timed.steps], timed.resets
    return [_row("webshop browser start (Chromium + server, 1k catalog)", [start]),
            _row("webshop browser reset (1k catalog)", resets),
            _row("webshop browser step (headless Chromium, 1k catalog)", steps)]


def main_rows(quick: bool = False, browser: bool = True) -> list[dict]:
    rows: list[dict] = []
    gen10, idx10, cat10 = _build(10_000)
    rows += [gen10, idx10]
    rows.append(_search_rows(cat10, "10k products", 400 if quick else 2000))
    rows += _step_rows(cat10, "10k products", 40 if quick else 200)
    rows.append(_memory_row(cat10))
    del cat10
    _CACHE.clear()
    gc.collect()
    if not quick:
        gen100, idx100, cat100 = _build(100_000)
        rows += [gen100, idx100]
        rows.append(_search_rows(cat100, "100k products", 1000))
        rows += _step_rows(cat100, "100k products", 60)
        del cat100
        gc.collect()
    if browser:
        rows += _browser_rows(6 if quick else 20)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="10k only, fewer samples")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium rows")
    ap.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    args = ap.parse_args()
    rows = main_rows(quick=args.quick, browser=not args.no_browser)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            extra = {k: v for k, v in row.items() if k not in ("benchmark", "p50_ms", "p95_ms")}
            p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.3f}"
            p95 = "-" if row["p95_ms"] is None else f"{row['p95_ms']:.3f}"
            print(f"{row['benchmark']:<80} p50 {p50:>10} ms  p95 {p95:>10} ms  {extra}")
