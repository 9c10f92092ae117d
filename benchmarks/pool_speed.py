"""Env-pool throughput: env steps per second for the in-process, subprocess and Ray pools
(:mod:`hero_gym.pool`) with 8 envs, on WebShop's browser mode (a real headless Chromium per env) and on
Tau-bench retail with the scripted user.

    python benchmarks/pool_speed.py [--envs 8] [--steps 160] [--only webshop|tau] [--kinds inprocess,subprocess,ray]

Each env slot is driven by a scripted agent in the driver (WebShop: the expert and random agents of
``hero_gym.envs.webshop.expert``, alternating; Tau: the task's gold actions announced and confirmed the
way ``gold_expert`` plays them). Every round, each running slot's action is submitted first
(``submit_step``) and the results are collected after, as :func:`hero_gym.agents.rollout.collect` does;
a finished episode's slot is reset with the next task. Reported: env steps per second over the whole
loop (resets included; pool start-up and one warm-up reset per env excluded, printed apart) and the ratio to the in-process pool.
The Ray pool starts a local Ray instance. Needs Chromium + chromedriver for the WebShop rows.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from hero_gym.core import TextMessage
from hero_gym.pool import make_pool
from hero_gym.tools import ToolCall

WEBSHOP = "hero_gym/WebShopBrowser-v0"
TAU = "hero_gym/TauRetail-v0"


def webshop_agent(k: int) -> Callable[[], Iterator[Any]]:
    """Episode ``k``'s driver: expert on even ``k``, random on odd (they read the observation)."""
    from hero_gym.envs.webshop.expert import ExpertAgent, RandomAgent

    def play(first: tuple[str, dict]) -> Iterator[Any]:
        agent = ExpertAgent() if k % 2 == 0 else RandomAgent(k)
        obs, info = first
        agent.reset(info)
        while True:
            obs, info = yield agent.act(obs, info)

    return play


def tau_scripts(n: int) -> list[list[Any]]:
    """The first ``n`` retail tasks as fixed action scripts (identity question, each gold call with a
    confirmation request before writes, the outputs, follow-ups), read from one driver-side env."""
    import hero_gym

    env = hero_gym.make(TAU)
    base = env.unwrapped
    writes = {t.name for t in base.tool_list if t.writes}
    scripts = []
    for k in range(n):
        env.reset(seed=0, options={"task_index": k})
        script: list[Any] = [TextMessage("To get started, could you please give me your email address, or your "
                                         "name and zip code?")]
        for a in base.task.actions:
            if a.name in writes:
                script.append(TextMessage(f"I am going to call {a.name} with {json.dumps(a.kwargs)}. Do you confirm?"))
            script.append(ToolCall(name=a.name, arguments=dict(a.kwargs)))
        outputs = ", ".join(base.task.outputs)
        script.append(TextMessage(f"Here is what you asked for: {outputs}. Anything else?" if outputs else
                                  "All done. Is there anything else I can help you with?"))
        script += [TextMessage("Is there anything else I can help you with?")] * 3
        scripts.append(script)
    env.close()
    return scripts


def tau_agent(scripts: list[list[Any]]) -> Callable[[int], Callable[[tuple], Iterator[Any]]]:
    def for_task(k: int) -> Callable[[tuple], Iterator[Any]]:
        def play(first: tuple[str, dict]) -> Iterator[Any]:
            for action in scripts[k % len(scripts)]:
                yield action
            while True:   # script exhausted before the user ended: keep talking until the env stops
                yield TextMessage("Is there anything else I can help you with?")
        return play
    return for_task


def run(kind: str, env_id: str, n_envs: int, steps: int, agent_for: Callable[[int], Callable],
        n_tasks: int, env_kwargs: dict | None = None) -> dict[str, Any]:
    """Drive a pool of ``kind`` for at least ``steps`` env steps; return the throughput row."""
    t0 = time.perf_counter()
    pool = make_pool(kind, env_id, n_envs, env_kwargs or {})
    for env in pool.envs:   # warm-up (counted as start-up): data and browsers load on a worker's first reset
        env.reset(seed=0, options={"task_index": 0})
    startup = time.perf_counter() - t0
    try:
        next_task = 0
        drivers: list[Any] = [None] * n_envs
        actions: list[Any] = [None] * n_envs

        def start(i: int) -> None:
            nonlocal next_task
            k = next_task % n_tasks
            next_task += 1
            first = pool.envs[i].reset(seed=k, options={"task_index": k})
            drivers[i] = agent_for(k)(first)
            actions[i] = next(drivers[i])

        t0 = time.perf_counter()
        for i in range(n_envs):
            start(i)
        done_steps, episodes = 0, 0
        while done_steps < steps:
            for i, env in enumerate(pool.envs):
                env.submit_step(actions[i])
            for i, env in enumerate(pool.envs):
                obs, reward, term, trunc, info = env.step(actions[i])
                done_steps += 1
                if term or trunc:
                    episodes += 1
                    start(i)
                else:
                    actions[i] = drivers[i].send((obs, info))
        seconds = time.perf_counter() - t0
        return {"env": env_id, "pool": kind, "envs": n_envs, "steps": done_steps, "episodes": episodes,
                "seconds": round(seconds, 3), "steps_per_s": round(done_steps / seconds, 2),
                "startup_s": round(startup, 2), "crashes": len(pool.crashes)}
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=160, help="env steps per pool kind and env (at least)")
    ap.add_argument("--only", choices=["webshop", "tau"])
    ap.add_argument("--kinds", default="inprocess,subprocess,ray")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    kinds = args.kinds.split(",")
    if "ray" in kinds:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False)
    rows: list[dict] = []
    if args.only in (None, "webshop"):
        for kind in kinds:
            rows.append(run(kind, WEBSHOP, args.envs, args.steps, webshop_agent, n_tasks=100))
            print(json.dumps(rows[-1]), flush=True)
    if args.only in (None, "tau"):
        scripts = tau_scripts(50)
        for kind in kinds:
            rows.append(run(kind, TAU, args.envs, args.steps, tau_agent(scripts), n_tasks=len(scripts)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'env':<28} {'pool':<11} {'steps/s':>9} {'vs inprocess':>13} {'startup s':>10}  steps  episodes")
    for r in rows:
        base = next((b for b in rows if b["env"] == r["env"] and b["pool"] == "inprocess"), None)
        ratio = f"{r['steps_per_s'] / base['steps_per_s']:.2f}x" if base else "-"
        print(f"{r['env']:<28} {r['pool']:<11} {r['steps_per_s']:>9.1f} {ratio:>13} {r['startup_s']:>10.1f}  "
              f"{r['steps']:>5}  {r['episodes']:>8}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
