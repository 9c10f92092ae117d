"""Long runs: 10,000 episodes of each env in one process; memory and open files over time.

    python benchmarks/long_run.py [--episodes 10000] [--envs lookup,tau,webshop] [--browser-episodes 0]

One env instance per domain plays ``--episodes`` episodes in a row: three out of four with a
competent scripted agent (Lookup: look up then answer; TauRetail: the gold-playing agent of
``hero_gym.envs.tau_bench.gold_expert``; WebShop: the expert, or a random agent on odd episodes) and every
fourth with a *hostile* agent (replies over the length cap, malformed JSON, unknown tools, several
calls at once, empty replies) until the turn budget runs out. The process's resident memory (RSS),
open file descriptors, threads and live Python objects are printed every ``--every`` episodes.

Growth is reported from the first checkpoint (after the warm-up caches have filled: catalog
index, search results, tokenizers) to the last. With ``--browser-episodes N`` the WebShop browser
env (real Chromium) also plays N episodes and its Chromium process count is printed too.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import warnings

import psutil

import hero_gym

HOSTILE = [
    "x" * 70_000,                                                # over the reply cap
    "<tool_call>{\"name\": \"lookup\", \"arguments\": {oops</tool_call>",   # malformed JSON
    "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>",       # unknown tool
    "search[a] click[b] search[c]",                               # several calls
    "   ",                                                        # empty
    "click[" * 5_000,                                             # bracket soup
    "f(from=" + "[" * 3_000 + ")",                                # deep nesting
]


def _hostile_episode(env, i: int) -> None:
    env.reset(options={"task_index": i % env.unwrapped.num_tasks()})
    k, done = 0, False
    while not done:
        *_, term, trunc, _ = env.step(HOSTILE[(i + k) % len(HOSTILE)])
        done, k = term or trunc, k + 1


def lookup_episode(env, i: int) -> None:
    base = env.unwrapped
    obs, info = env.reset(options={"task_index": i % base.num_tasks()})
    item = obs.removeprefix("What is the code for ").rstrip("?")
    code, *_ = env.step('<tool_call>{"name": "lookup", "arguments": {"key": %s}}</tool_call>' % json.dumps(item))
    env.step('<tool_call>{"name": "answer", "arguments": {"code": %s}}</tool_call>' % json.dumps(code))


def tau_episode(env, i: int) -> None:
    from hero_gym.envs.tau_bench.gold_expert import play_gold

    play_gold(env, seed=i, options={"task_index": i % env.unwrapped.num_tasks()})


def webshop_episode(env, i: int) -> None:
    from hero_gym.envs.webshop.expert import ExpertAgent, RandomAgent, run_episode

    agent = ExpertAgent() if i % 2 == 0 else RandomAgent(i)
    run_episode(env, agent, options={"task_index": i % env.unwrapped.num_tasks()})


DOMAINS = {
    "lookup": ("hero_gym/Lookup-v0", {}, lookup_episode),
    "tau": ("hero_gym/TauRetail-v0", {}, tau_episode),
    "webshop": ("hero_gym/WebShop-v0", {"split": "test"}, webshop_episode),
    "browser": ("hero_gym/WebShopBrowser-v0", {"split": "test"}, webshop_episode),
}


def _chromium() -> tuple[int, float]:
    """Chromium/chromedriver processes under this one, and their total RSS in MB."""
    n, rss = 0, 0
    for p in psutil.Process().children(recursive=True):
        try:
            if "chrom" in (p.name() or ""):
                n, rss = n + 1, rss + p.memory_info().rss
        except psutil.Error:
            pass
    return n, rss / 2**20


def snapshot(proc: psutil.Process, episodes: int, t0: float, browser: bool) -> dict:
    gc.collect()
    row = {"episodes": episodes, "seconds": time.monotonic() - t0, "rss_mb": proc.memory_info().rss / 2**20,
           "fds": proc.num_fds(), "threads": proc.num_threads(), "objects": len(gc.get_objects())}
    if browser:
        row["chromium"], row["chromium_mb"] = _chromium()
    return row


def run(name: str, episodes: int, every: int) -> list[dict]:
    env_id, kwargs, episode = DOMAINS[name]
    proc = psutil.Process()
    env = hero_gym.make(env_id, **kwargs)
    rows = []
    t0 = time.monotonic()
    browser = name == "browser"
    print(f"\n{env_id}: {episodes:,} episodes (every 4th hostile)")
    print(f"{'episodes':>9} {'seconds':>8} {'RSS MB':>8} {'fds':>5} {'threads':>7} {'objects':>9}"
          + (f" {'chromium':>8} {'chrome MB':>9}" if browser else ""))
    for i in range(episodes):
        if i % 4 == 3:
            _hostile_episode(env, i)
        else:
            episode(env, i)
        if (i + 1) % every == 0 or i + 1 == episodes:
            r = snapshot(proc, i + 1, t0, browser)
            rows.append(r)
            print(f"{r['episodes']:>9,} {r['seconds']:>8.1f} {r['rss_mb']:>8.1f} {r['fds']:>5} {r['threads']:>7} "
                  f"{r['objects']:>9,}" + (f" {r['chromium']:>8} {r['chromium_mb']:>9.1f}" if browser else ""), flush=True)
    env.close()
    first, last = rows[0], rows[-1]
    print(f"growth from {first['episodes']:,} to {last['episodes']:,} episodes: RSS {last['rss_mb'] - first['rss_mb']:+.1f} MB, "
          f"fds {last['fds'] - first['fds']:+d}, threads {last['threads'] - first['threads']:+d}, "
          f"objects {last['objects'] - first['objects']:+,}; {1000 * last['seconds'] / last['episodes']:.2f} ms/episode")
    after = snapshot(proc, episodes, t0, browser)
    print(f"after close: fds {after['fds']}, threads {after['threads']}"
          + (f", chromium processes {after['chromium']}" if browser else ""))
    return rows


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=10_000)
    ap.add_argument("--every", type=int, default=1_000, help="print a checkpoint every N episodes")
    ap.add_argument("--envs", default="lookup,tau,webshop")
    ap.add_argument("--browser-episodes", type=int, default=0, help="also run the browser env this many episodes")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    if not os.environ.get("HERO_GYM_TAUBENCH_DIR"):
        print("note: HERO_GYM_TAUBENCH_DIR is not set; TauRetail uses its generated data")
    proc = psutil.Process()
    print(f"process start: RSS {proc.memory_info().rss / 2**20:.1f} MB, fds {proc.num_fds()}")
    out = {}
    for name in [n.strip() for n in args.envs.split(",") if n.strip()]:
        if name not in DOMAINS:
            ap.error(f"unknown env {name!r}; choose from {sorted(DOMAINS)}")
        out[name] = run(name, args.episodes, min(args.every, args.episodes))
    if args.browser_episodes:
        out["browser"] = run("browser", args.browser_episodes, max(1, min(args.every, args.browser_episodes // 5)))
    return out


if __name__ == "__main__":
    main()
