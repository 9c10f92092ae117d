"""Hostile replies: what a runaway or adversarial generation costs each env and each parser.

    python benchmarks/hostile_input.py [--repeat 5]

Two tables:

1. **Per env** (Lookup, TauRetail, WebShop, each with its default parser): the time of one
   ``env.step`` on a 1 MB reply of each hostile shape with the default reply cap (target: < 100 ms;
   it is rejected unparsed with an error observation), and, with the cap disabled, the step time
   for 1k and 100k characters of the same shape, their ratio, and the per-character slowdown
   (ratio / 100). Linear work gives a ratio near 100 (less when the fixed per-step cost dominates at
   1k, somewhat more when 1k fits in cache and 100k does not), i.e. a per-character slowdown of
   order 1; a quadratic matcher gives a ratio of ~10,000 (slowdown ~100).
2. **Per parser** (``parse_reply`` alone, cap disabled): 1k vs 100k characters, worst shape.

Shapes are the ones that made backtracking regular expressions quadratic: a long run of letters
(before a missing ``[``), unclosed ``click[``, ``<tool_call>`` with unterminated JSON, whitespace
inside a code fence, an unclosed call ``f(``, prose; and the costliest *valid* input, a functional
call with thousands of keyword arguments (Python's own parser builds a node per argument: linear,
but the slowest per character). Times are medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import hero_gym
import hero_gym.parsers as parsers
from hero_gym.parsers import PARSERS, parse_reply
from hero_gym.tools import ToolCallError

ENVS = ["hero_gym/Lookup-v0", "hero_gym/TauRetail-v0", "hero_gym/WebShop-v0"]


def shapes(n: int) -> dict[str, str]:
    """Hostile replies of exactly ``n`` characters."""
    def fit(s: str, filler: str) -> str:
        return (s + filler * n)[:n]

    return {
        "letters": "a" * n,
        "letters+[": fit("", "a")[:-1] + "[",
        "open click[": fit("", "click["),
        "unclosed tool_call": fit('<tool_call>{"name": "x", "arguments": {"q": "', "a"),
        "fence+spaces": fit("```json\n", " "),
        "unclosed f(": fit("f(", "a"),
        "many kwargs": ("f(" + "from=1, " * ((n - 3) // 8)).ljust(n - 1) + ")",
        "prose": fit("", "I will search for it now. "),
    }


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def env_rows(repeat: int) -> list[dict]:
    rows = []
    for env_id in ENVS:
        env = hero_gym.make(env_id)

        def step(reply: str) -> None:
            env.reset(seed=0)
            env.step(reply)

        for shape in shapes(10):
            big = shapes(1_000_000)[shape]
            env.reset(seed=0)
            t = time.perf_counter()
            obs, *_, info = env.step(big)
            t_mb = time.perf_counter() - t
            kind = (info.get("action_error") or {}).get("kind")
            saved, parsers.MAX_REPLY_CHARS = parsers.MAX_REPLY_CHARS, 0   # measure the parsing itself
            try:
                t1 = _median_time(lambda: step(shapes(1_000)[shape]), repeat)
                t100 = _median_time(lambda: step(shapes(100_000)[shape]), repeat)
            finally:
                parsers.MAX_REPLY_CHARS = saved
            rows.append({"env": env_id.split("/")[1], "shape": shape, "mb_ms": t_mb * 1000, "mb_error": kind,
                         "k1_ms": t1 * 1000, "k100_ms": t100 * 1000, "ratio": t100 / max(t1, 1e-9)})
        env.close()
    return rows


def parser_rows(repeat: int) -> list[dict]:
    rows = []
    for name in sorted(PARSERS):
        worst = None
        for shape in shapes(10):
            def run(n: int) -> None:
                try:
                    parse_reply(shapes(n)[shape], name, max_chars=0)
                except ToolCallError:
                    pass
            t1, t100 = _median_time(lambda: run(1_000), repeat), _median_time(lambda: run(100_000), repeat)
            row = {"parser": name, "shape": shape, "k1_ms": t1 * 1000, "k100_ms": t100 * 1000,
                   "ratio": t100 / max(t1, 1e-9)}
            if worst is None or row["k100_ms"] > worst["k100_ms"]:
                worst = row
        rows.append(worst)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    print(f"reply cap: {parsers.MAX_REPLY_CHARS:,} characters; 1 MB target < 100 ms\n")
    rows = env_rows(args.repeat)
    print(f"{'env':<12} {'shape':<19} {'1MB step ms':>11} {'1MB error':>10} {'1k ms':>8} {'100k ms':>8} {'100k/1k':>8}"
          f" {'per-char':>8}")
    for r in rows:
        print(f"{r['env']:<12} {r['shape']:<19} {r['mb_ms']:>11.2f} {str(r['mb_error']):>10} {r['k1_ms']:>8.3f} "
              f"{r['k100_ms']:>8.2f} {r['ratio']:>8.1f} {r['ratio'] / 100:>8.2f}")
    worst_mb = max(r["mb_ms"] for r in rows)
    print(f"\nworst 1 MB step: {worst_mb:.2f} ms ({'meets' if worst_mb < 100 else 'MISSES'} the < 100 ms target); "
          f"worst 100k/1k ratio: {max(r['ratio'] for r in rows):.1f} (linear ~100, quadratic ~10,000)\n")
    print(f"{'parser':<11} {'worst shape':<19} {'1k ms':>8} {'100k ms':>8} {'100k/1k':>8} {'per-char':>8}")
    for r in parser_rows(args.repeat):
        print(f"{r['parser']:<11} {r['shape']:<19} {r['k1_ms']:>8.3f} {r['k100_ms']:>8.2f} {r['ratio']:>8.1f}"
              f" {r['ratio'] / 100:>8.2f}")


if __name__ == "__main__":
    main()
