"""Scripted agents for tests and benchmarks: an expert that knows the goal, and a random agent.

The expert searches the instruction, pages through the results until it sees the goal product,
opens it, clicks the goal's option values and buys. It reads the goal from ``info["task"]`` (so it
is privileged) and the page from ``info["available_actions"]``. The random agent searches a few
random words of the instruction and then clicks uniformly among the buttons on the page.
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["ExpertAgent", "RandomAgent", "run_episode", "evaluate"]


class ExpertAgent:
    def __init__(self) -> None:
        self.task: dict[str, Any] = {}
        self.pending: list[str] = []

    def reset(self, info: dict[str, Any]) -> None:
        self.task = info["task"]
        self.pending = [v.lower() for v in self.task["options"].values()]

    def act(self, obs: str, info: dict[str, Any]) -> str:
        avail = info["available_actions"]
        clickables = avail["clickables"]
        if avail["has_search_bar"]:
            return f"search[{self.task['instruction']}]"
        goal = self.task["asin"].lower()
        if goal in clickables:
            return f"click[{goal}]"
        if "buy now" in clickables:          # on the item page (or a sub-page: go back to it)
            while self.pending:
                value = self.pending.pop(0)
                if value in clickables:
                    return f"click[{value}]"
            return "click[buy now]"
        if "next >" in clickables:
            return "click[next >]"
        products = [c for c in clickables if c not in ("back to search", "< prev", "next >")]
        if products:                          # the goal product was not found: buy the first result
            return f"click[{products[0]}]"
        if "< prev" in clickables:
            return "click[< prev]"
        return "click[back to search]"


class RandomAgent:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.words: list[str] = []

    def reset(self, info: dict[str, Any]) -> None:
        self.words = info["task"]["instruction"].split()

    def act(self, obs: str, info: dict[str, Any]) -> str:
        avail = info["available_actions"]
        if avail["has_search_bar"]:
            k = self.rng.randint(1, min(4, len(self.words)))
            return f"search[{' '.join(self.rng.sample(self.words, k))}]"
        return f"click[{self.rng.choice(avail['clickables'])}]"


def run_episode(env, agent, *, seed: int | None = None, options: dict | None = None) -> dict[str, Any]:
    """Play one episode; returns reward, success, turns and the action list."""
    obs, info = env.reset(seed=seed, options=options)
    agent.reset(info)
    actions, reward, terminated, truncated = [], 0.0, False, False
    while not (terminated or truncated):
        action = agent.act(obs, info)
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
    return {"reward": float(reward), "success": bool(info.get("success", False)), "turns": len(actions),
            "actions": actions, "terminated": terminated}


def evaluate(env, agent, *, split: str = "test", n: int | None = None) -> dict[str, float]:
    """Mean reward, score (100 x mean reward) and success rate over the first ``n`` goals of a split."""
    total = env.unwrapped.num_tasks(split)
    n = total if n is None else min(n, total)
    rewards, successes = [], []
    for i in range(n):
        out = run_episode(env, agent, options={"split": split, "task_index": i})
        rewards.append(out["reward"])
        successes.append(out["success"])
    mean = sum(rewards) / max(1, len(rewards))
    return {"episodes": n, "mean_reward": mean, "score": 100.0 * mean,
            "success_rate": sum(successes) / max(1, len(successes))}
