"""Load test of the env server (``hero-gym serve``) on loopback: requests/s and p50/p99 latency of reset and step.

Starts ``hero-gym serve ENV`` in a subprocess on 127.0.0.1 (or uses ``--url``, which must be a loopback
address), runs ``--clients`` threads, each with its own :func:`hero_gym.remote.make` session playing episodes,
and stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first (both bounded).

The Lookup env is played by a script (look the item up, answer the code: 3 requests per episode); other envs
get plain messages until the episode ends or ``--max-steps``.

    python benchmarks/env_server_load.py                      # Lookup, 8 clients, 2000 requests
    python benchmarks/env_server_load.py --env hero_gym/TauRetail-v0 -k data=generated --clients 16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

import numpy as np

import hero_gym
from hero_gym import remote
from hero_gym.envs.webshop.server import is_loopback

MAX_REQUESTS = 100_000
MAX_SECONDS = 600.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(env_id: str, kwargs: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "hero_gym.cli", "serve", env_id, "--host", "127.0.0.1", "--port", str(port),
           "--max-sessions", "256"]
    for kv in kwargs:
        cmd += ["-k", kv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if requests.get(url + "/health", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def _client(url: str, env_id: str, seed0: int, stop: threading.Event, budget: list[int], lock: threading.Lock,
            lat: dict[str, list[float]], max_steps: int, errors: list[str]) -> None:
    env = remote.make(url)
    episode = 0

    def take() -> bool:
        with lock:
            if budget[0] <= 0 or stop.is_set():
                return False
            budget[0] -= 1
            return True

    try:
        while take():
            t = time.perf_counter()
            obs, info = env.reset(seed=seed0 + episode)
            lat["reset"].append(time.perf_counter() - t)
            episode += 1
            item = re.search(r"code for (\w+)", obs)
            code = ""
            for turn in range(max_steps):
                if not take():
                    return
                if env_id.endswith("Lookup-v0") and item:
                    action = (hero_gym.ToolCall(name="lookup", arguments={"key": item.group(1)}) if turn == 0 else
                              hero_gym.ToolCall(name="answer", arguments={"code": code}))
                else:
                    action = hero_gym.TextMessage("Could you tell me more?")
                t = time.perf_counter()
                obs, _, terminated, truncated, info = env.step(action)
                lat["step"].append(time.perf_counter() - t)
                code = obs.strip()
                if terminated or truncated:
                    break
    except Exception as err:  # reported, not hidden
        errors.append(repr(err))
    finally:
        env.close()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="hero_gym/Lookup-v0")
    ap.add_argument("-k", "--kwarg", action="append", default=[], help="env constructor key=value (server side)")
    ap.add_argument("--url", default=None, help="use a running server (loopback only) instead of starting one")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=2000, help=f"total requests (<= {MAX_REQUESTS})")
    ap.add_argument("--seconds", type=float, default=60.0, help=f"time bound (<= {MAX_SECONDS:g})")
    ap.add_argument("--max-steps", type=int, default=10, help="steps per episode at most")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 256:
        ap.error("--clients must be in 1..256")
    if not 1 <= args.requests <= MAX_REQUESTS or not 0 < args.seconds <= MAX_SECONDS:
        ap.error(f"--requests must be in 1..{MAX_REQUESTS} and --seconds in (0, {MAX_SECONDS:g}]")
    proc = None
    if args.url:
        if not is_loopback(urlparse(args.url).hostname or ""):
            ap.error("--url must be a loopback address (this is a load generator)")
        url = args.url.rstrip("/")
    else:
        proc, url = _start(args.env, args.kwarg)
    lat: dict[str, list[float]] = {"reset": [], "step": []}
    errors: list[str] = []
    stop, lock, budget = threading.Event(), threading.Lock(), [args.requests]
    threads = [threading.Thread(target=_client, args=(url, args.env, 1000 * i, stop, budget, lock, lat,
                                                      args.max_steps, errors)) for i in range(args.clients)]
    try:
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        deadline = t0 + args.seconds
        for th in threads:
            th.join(max(0.0, deadline - time.perf_counter()))
        stop.set()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    total = len(lat["reset"]) + len(lat["step"])
    out = {"env": args.env, "clients": args.clients, "requests": total, "seconds": round(wall, 3),
           "requests_per_s": round(total / wall, 1), "errors": len(errors), "cpus": os.cpu_count()}
    print(f"env {args.env}  clients {args.clients}  requests {total} in {wall:.2f} s  "
          f"-> {total / wall:.1f} requests/s  (errors: {len(errors)}; cpus: {os.cpu_count()})")
    print(f"{'request':<8} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in ("reset", "step", "all"):
        xs = np.array(lat["reset"] + lat["step"] if kind == "all" else lat[kind]) * 1000
        if len(xs) == 0:
            continue
        p50, p99 = np.percentile(xs, 50), np.percentile(xs, 99)
        out[kind] = {"count": int(len(xs)), "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}
        print(f"{kind:<8} {len(xs):>6} {p50:>8.2f} {p99:>8.2f} {xs.max():>8.2f}")
    if errors:
        print("first error:", errors[0])
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
