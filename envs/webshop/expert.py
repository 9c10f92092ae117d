"""Scripted agents for tests, benchmarks and warm starts: two experts and a random agent.

:class:`ExpertAgent` searches the instruction, pages through the results until it sees the goal
product, opens it, clicks the goal's option values and buys. It reads the goal from ``info["task"]``
(so it is privileged) and the page from ``info["available_actions"]``.

:class:`InstructionExpert` does not know the answer: it sees only what an agent sees (the
instruction and the current page) and acts from any page, so it can label the states another
policy visits (DAgger). Its rule is one a small model can imitate: search the instruction, open the
first result whose shown price is under the instruction's price limit, click every option value the
instruction names, buy. On the generated 1,000-product catalog it buys the right product with the
right options in about 70 % of train goals and 58 % of test goals.

The random agent searches a few random words of the instruction and then clicks uniformly among the
buttons on the page.
"""

from __future__ import annotations

import random
import re
from typing import Any

__all__ = ["ExpertAgent", "GoalExpert", "InstructionExpert", "RandomAgent", "run_episode", "evaluate"]

_PRICE_LIMIT = re.compile(r"price lower than \$?(\d+(?:\.\d+)?)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


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


class InstructionExpert:
    """A non-privileged expert for :class:`~hero_gym.envs.webshop.env.WebShopEnv` that acts from any state.

    It reads the current page from ``env.unwrapped.state`` (the page kind, the query, the product on
    screen, the options chosen) and the instruction; never the goal product or the goal's options.
    Rules, per page: search page -> ``search[<instruction>]``; results -> click the first product on
    the page whose lowest shown price is below the instruction's limit (the first product when none
    is); item -> click the first value, among the option types not chosen yet, that the instruction
    names, else ``click[buy now]``; description/features/reviews -> ``click[< prev]``.
    ``act`` follows the agent interface of :func:`run_episode`; :meth:`action` needs no arguments.
    """

    def __init__(self, env: Any) -> None:
        self.env = env.unwrapped if hasattr(env, "unwrapped") else env
        if not hasattr(self.env, "state") or not hasattr(self.env, "shop"):
            raise TypeError("InstructionExpert needs the in-process WebShopEnv (it reads the page state)")

    def reset(self, info: dict[str, Any] | None = None) -> None:
        """Nothing to remember between episodes (kept for the agent interface)."""

    def act(self, obs: str | None = None, info: dict[str, Any] | None = None) -> str:
        return self.action()

    def action(self) -> str:
        """The expert's action in the env's current state."""
        env = self.env
        if env.goal is None:
            raise RuntimeError("InstructionExpert: the env has not been reset")
        instruction = env.goal.instruction
        state = env.state
        if state.kind == "search":
            return f"search[{instruction}]"
        if state.kind == "results":
            asins = env.shop.page_asins(state)
            if not asins:
                return "click[back to search]"
            m = _PRICE_LIMIT.search(instruction)
            limit = float(m.group(1)) if m else float("inf")
            for asin in asins:
                shown = _NUMBER.findall(env.catalog.product(asin).price_tag)
                if shown and float(shown[0]) < limit:
                    return f"click[{asin.lower()}]"
            return f"click[{asins[0].lower()}]"
        if state.kind == "item":
            product = env.catalog.product(state.asin)
            chosen = dict(state.options)
            text = instruction.lower()
            for otype, values in product.options:
                if otype in chosen:
                    continue
                for v in values:
                    if v.lower() in text:
                        return f"click[{v.lower()}]"
            return "click[buy now]"
        if state.kind == "sub":
            return "click[< prev]"
        raise RuntimeError(f"InstructionExpert: no action on a {state.kind!r} page (the episode has ended)")


class GoalExpert:
    """The goal-knowing expert as a function of the env's current state (the WebShop oracle hook).

    :class:`ExpertAgent`'s rule, read from ``env.unwrapped.state`` and the goal instead of remembered
    between steps, so it acts from any state (after another policy's mistakes too). Per page:

    * search -> ``search[<instruction>]``;
    * results -> the goal product if it is on this page; the page holding it (``next >``/``< prev``)
      if the query found it; else ``back to search`` when the query is not the instruction, and
      otherwise (the instruction itself does not find the goal) :class:`ExpertAgent`'s fallback: the
      next page, then the first product;
    * item -> on the goal product: the first goal option value not chosen yet, then ``buy now``; on
      another product: ``< prev`` when the query found the goal, else ``back to search`` (query not the
      instruction) or the fallback purchase (goal option values, ``buy now``);
    * description/features/reviews -> ``< prev``.

    From the reset state it plays :class:`ExpertAgent`'s episode, so its success rate is the expert's.
    It reads the hidden goal: privileged, an oracle for measurement, never a policy or a note source.
    """

    def __init__(self, env: Any) -> None:
        self.env = env.unwrapped if hasattr(env, "unwrapped") else env
        if not hasattr(self.env, "state") or not hasattr(self.env, "shop"):
            raise TypeError("GoalExpert needs the in-process WebShopEnv (it reads the page state)")

    def action(self) -> str | None:
        """The expert's action in the env's current state (``None`` after the purchase)."""
        from .catalog import clean

        env = self.env
        goal, state = env.goal, env.state
        if goal is None:
            raise RuntimeError("GoalExpert: the env has not been reset")
        if state.kind == "done":
            return None
        if state.kind == "search":
            return f"search[{goal.instruction}]"
        if state.kind == "sub":
            return "click[< prev]"
        results = env.shop.results(state.query)
        found = goal.asin in results
        own_query = state.query == clean(goal.instruction)
        clickables = env.shop.available_actions(state)["clickables"]
        if state.kind == "results":
            page_asins = env.shop.page_asins(state)
            if goal.asin in page_asins:
                return f"click[{goal.asin.lower()}]"
            if found:
                from .search import PER_PAGE

                target = results.index(goal.asin) // PER_PAGE + 1
                return "click[next >]" if target > state.page else "click[< prev]"
            if not own_query:
                return "click[back to search]"
            if "next >" in clickables:
                return "click[next >]"
            return f"click[{page_asins[0].lower()}]" if page_asins else "click[back to search]"
        # item page
        if state.asin != goal.asin:
            if found:
                return "click[< prev]"
            if not own_query:
                return "click[back to search]"
        chosen = {v.lower() for _, v in state.options}
        for _, value in goal.options:
            v = value.lower()
            if v not in chosen and v in clickables:
                return f"click[{v}]"
        return "click[buy now]"


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
