"""Tau-bench env speed: reset, a read-only tool step, a writing tool step and the end-of-episode
reward, next to a straightforward implementation (deep-copy the database on reset, replay the
gold actions on a fresh deep copy and hash both whole databases for the reward), measured in the
same run on the same data.

Uses the official retail data when ``$HERO_GYM_TAUBENCH_DIR`` is set, else generated retail data
(the rows say which). ``main_rows()`` returns the rows; run this file to print them.
Targets: reset <= 1 ms, read step <= 0.1 ms, reward <= 5 ms, and >= 20x
faster than the straightforward version on reset + reward.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import sys
import time
from typing import Any

N_RESET = 400
N_STEP = 2000
N_REWARD = 115
N_BASELINE_RESET = 15
N_BASELINE_REWARD = 15


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _timeit(fn, n: int, setup=None) -> list[float]:
    out = []
    for i in range(n):
        if setup is not None:
            setup(i)
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main_rows(quick: bool = False) -> list[dict[str, Any]]:
    """Measure and return the rows. ``quick`` runs ~10x fewer iterations (for tests)."""
    global N_RESET, N_STEP, N_REWARD, N_BASELINE_RESET, N_BASELINE_REWARD
    saved = (N_RESET, N_STEP, N_REWARD, N_BASELINE_RESET, N_BASELINE_REWARD)
    if quick:
        N_RESET, N_STEP, N_REWARD, N_BASELINE_RESET, N_BASELINE_REWARD = 40, 200, 20, 3, 3
    try:
        return _measure()
    finally:
        N_RESET, N_STEP, N_REWARD, N_BASELINE_RESET, N_BASELINE_REWARD = saved


def _measure() -> list[dict[str, Any]]:
    from hero_gym.tools import ToolCall
    from hero_gym.envs.tau_bench.common import run_tool
    from hero_gym.envs.tau_bench.data import TauDB
    from hero_gym.envs.tau_bench.env import TauRetailEnv
    from hero_gym.envs.tau_bench.reward import compute_reward, full_db_hash, gold_result
    from hero_gym.envs.tau_bench.tools_retail import RETAIL_TOOL_MAP

    env = TauRetailEnv(data="auto", split="test")
    ds = env.dataset
    source = ds.source
    tasks = env.tasks()
    n_tasks = len(tasks)
    orders = ds.tables["orders"]
    pending = [o for o in orders.values() if o["status"] == "pending"]
    some_order = next(iter(orders))

    # ------------------------------------------------------------ ours
    reset_ms = _timeit(lambda i: env.reset(seed=i, options={"task_index": i % n_tasks}), N_RESET)

    env.reset(seed=0, options={"task_index": 0})
    read_call = ToolCall(name="get_order_details", arguments={"order_id": some_order})
    read_ms = []
    for _ in range(N_STEP // 20):
        env.reset(seed=0, options={"task_index": 0})
        read_ms += _timeit(lambda i: env.step(read_call), 20)
    # the tool alone (no parsing / schema validation / info building)
    read_tool_ms = _timeit(lambda i: run_tool(env.tool_map, env.db, "get_order_details", {"order_id": some_order}), N_STEP)

    write_ms = []
    for i in range(N_STEP // 4):
        o = pending[i % len(pending)]
        env.reset(seed=i, options={"task_index": 0})
        call = ToolCall(name="modify_pending_order_address", arguments={
            "order_id": o["order_id"], "address1": f"{i} Main St", "address2": "", "city": "Austin",
            "state": "TX", "country": "USA", "zip": "78701"})
        t0 = time.perf_counter()
        env.step(call)
        write_ms.append((time.perf_counter() - t0) * 1000.0)

    # reward: the agent replayed the gold calls, then the episode is graded (gold result cached,
    # as in any run after the first episode of a task)
    for t in tasks:
        gold_result(ds, env.tool_map, t)
    reward_ms = []
    for i in range(N_REWARD):
        t = tasks[i % n_tasks]
        env.reset(seed=i, options={"task_index": t.index})
        for a in t.actions:
            if a.name != "transfer_to_human_agents":
                run_tool(env.tool_map, env.db, a.name, a.kwargs)
        t0 = time.perf_counter()
        r = compute_reward(ds, env.tool_map, t, env.db, list(t.outputs))
        reward_ms.append((time.perf_counter() - t0) * 1000.0)
        assert r.reward == 1.0
    # first-time gold replay (uncached) for reference
    ds.gold_cache.clear()
    gold_first_ms = _timeit(lambda i: gold_result(ds, env.tool_map, tasks[i % n_tasks]), n_tasks)

    # ------------------------------------------------------------ straightforward baseline
    base_state: dict[str, Any] = {}

    def b_reset(i):
        base_state["db"] = copy.deepcopy(ds.tables)

    b_reset_ms = _timeit(b_reset, N_BASELINE_RESET)
    db_plain = TauDB(copy.deepcopy(ds.tables))
    b_read_ms = _timeit(lambda i: run_tool(RETAIL_TOOL_MAP, db_plain, "get_order_details", {"order_id": some_order}), N_STEP)

    def b_reward(i):
        t = tasks[i % n_tasks]
        agent_db = base_state["agent_db"]
        gold_db = TauDB(copy.deepcopy(ds.tables))
        for a in t.actions:
            if a.name != "transfer_to_human_agents":
                run_tool(RETAIL_TOOL_MAP, gold_db, a.name, a.kwargs)
        ok = full_db_hash(agent_db.tables) == full_db_hash(gold_db.tables)
        assert ok

    def b_reward_setup(i):
        t = tasks[i % n_tasks]
        agent_db = TauDB(copy.deepcopy(ds.tables))
        for a in t.actions:
            if a.name != "transfer_to_human_agents":
                run_tool(RETAIL_TOOL_MAP, agent_db, a.name, a.kwargs)
        base_state["agent_db"] = agent_db

    b_reward_ms = _timeit(b_reward, N_BASELINE_REWARD, setup=b_reward_setup)

    def row(name, ours, base=None, target=None, note=""):
        p50 = statistics.median(ours)
        r = {"benchmark": f"tau_retail/{name}", "p50_ms": round(p50, 4), "p95_ms": round(_pct(ours, 0.95), 4),
             "baseline_p50_ms": None if base is None else round(statistics.median(base), 4),
             "speedup": None if base is None else round(statistics.median(base) / p50, 1),
             "target_ms": target, "n": len(ours), "data": f"{source} ({n_tasks} test tasks)"}
        if note:
            r["note"] = note
        return r

    combined = [a + b for a, b in zip(reset_ms, reward_ms)]
    b_combined = [a + b for a, b in zip(b_reset_ms, b_reward_ms)]
    return [
        row("reset", reset_ms, b_reset_ms, 1.0, "ours: clear copy-on-write overlays; baseline: deepcopy of the DB"),
        row("read_step(env.step)", read_ms, None, 0.1, "get_order_details through env.step (parse, schema check, info)"),
        row("read_step(tool)", read_tool_ms, b_read_ms, 0.1, "get_order_details tool call alone"),
        row("write_step(env.step)", write_ms, None, None, "modify_pending_order_address through env.step, first write after reset"),
        row("reward", reward_ms, b_reward_ms, 5.0, "ours: cached gold + touched records; baseline: deepcopy + gold replay + 2 full hashes"),
        row("reset+reward", combined, b_combined, None, "target: >= 20x faster than the baseline"),
        row("gold_replay_first_time", gold_first_ms, None, None, "one-off per task and process (then cached)"),
    ]


def main() -> None:
    rows = main_rows()
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'benchmark':34s} {'p50_ms':>9s} {'p95_ms':>9s} {'base_p50':>10s} {'speedup':>8s} {'target':>7s}")
    for r in rows:
        base = "-" if r["baseline_p50_ms"] is None else f"{r['baseline_p50_ms']:.3f}"
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.0f}x"
        tgt = "-" if r["target_ms"] is None else f"{r['target_ms']}"
        print(f"{r['benchmark']:34s} {r['p50_ms']:9.4f} {r['p95_ms']:9.4f} {base:>10s} {sp:>8s} {tgt:>7s}")
    print(f"data: {rows[0]['data']}")


if __name__ == "__main__":
    if not os.environ.get("HERO_GYM_TAUBENCH_DIR") and os.path.isdir(
            os.path.join(os.path.dirname(__file__), "..", "..", "shared", "taubench")):
        os.environ["HERO_GYM_TAUBENCH_DIR"] = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "taubench")
    main()
