"""Experts for the warm start: an env's own expert, played as a policy so demonstrations are token-exact.

:func:`make_expert` picks the expert for an env (WebShop: the non-privileged
:class:`~hero_gym.envs.webshop.expert.InstructionExpert`; Tau-bench retail / airline: the gold-action
:class:`~hero_gym.envs.tau_bench.gold_expert.GoldExpert`; Lookup: its solver). :class:`ExpertPolicy` wraps
one for :func:`~hero_gym.agents.rollout.collect`, with an optional share of noisy actions. Used by
:mod:`hero_gym.agents.warmstart` (demonstrations and DAgger labels).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hero_gym.agents.policy import Generation
from hero_gym.chat import ChatRenderer

if TYPE_CHECKING:
    from hero_gym.envs.tau_bench.gold_expert import GoldExpert

__all__ = ["ExpertPolicy", "LookupSolver", "WebShopExpert", "make_expert"]



class WebShopExpert:
    """WebShop's non-privileged :class:`~hero_gym.envs.webshop.expert.InstructionExpert`, plus its noise.

    Noisy actions: half a click on a random button of the page (or a search of a few instruction words on
    the search page), half the expert's own action with one character of its argument changed (a
    mis-copied product id or option: usually an invalid action).
    """

    def __init__(self, env: Any):
        from hero_gym.envs.webshop.expert import InstructionExpert

        self.env = env.unwrapped
        self._expert = InstructionExpert(self.env)

    def action(self) -> str:
        return self._expert.action()

    def noisy_action(self, rng: random.Random) -> str:
        good = self.action()
        env = self.env
        if rng.random() < 0.5:
            if env.state.kind == "search":
                words = env.goal.instruction.split()
                k = rng.randint(1, min(4, len(words)))
                return f"search[{' '.join(rng.sample(words, k))}]"
            clickables = env.shop.available_actions(env.state)["clickables"]
            return f"click[{rng.choice(clickables)}]" if clickables else good
        return _corrupt(good, rng)


class LookupSolver:
    """The Lookup env's solver: ``lookup`` the requested item on the first turn, then ``answer`` its code."""

    def __init__(self, env: Any):
        self.env = env.unwrapped

    def action(self) -> str:
        item = self.env._item
        if self.env.turn == 0:
            return _hermes("lookup", {"key": item})
        return _hermes("answer", {"code": self.env.table[item]})

    def noisy_action(self, rng: random.Random) -> str:
        other = rng.choice(sorted(self.env.table))
        if rng.random() < 0.5:
            return _hermes("lookup", {"key": other + rng.choice("xyz")})
        return f"The code for {self.env._item} is probably {rng.randint(100, 999)}."


def _hermes(name: str, arguments: dict[str, Any]) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def _corrupt(action: str, rng: random.Random) -> str:
    """The action with one character of its bracketed argument replaced (``click[b0abc] -> click[b0axc]``)."""
    lo, hi = action.find("[") + 1, action.rfind("]")
    if lo <= 0 or hi <= lo:
        return action + "]"
    i = rng.randrange(lo, hi)
    choices = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789" if c != action[i]]
    return action[:i] + rng.choice(choices) + action[i + 1:]


def make_expert(env: Any) -> WebShopExpert | LookupSolver | GoldExpert:
    """The expert for ``env`` (an env made with ``hero_gym.make``): it reads the env's current state and
    must be asked after every ``reset``/``step`` of that same env (a Tau expert needs a reset env)."""
    from hero_gym.envs.example.lookup import LookupEnv
    from hero_gym.envs.tau_bench.env import TauBenchEnv
    from hero_gym.envs.tau_bench.gold_expert import GoldExpert
    from hero_gym.envs.webshop.env import WebShopEnv

    inner = env.unwrapped
    if isinstance(inner, WebShopEnv):
        return WebShopExpert(env)
    if isinstance(inner, TauBenchEnv):
        return GoldExpert(env)
    if isinstance(inner, LookupEnv):
        return LookupSolver(env)
    raise ValueError(f"no warm-start expert for {type(inner).__name__}: supported are WebShopEnv "
                     "(hero_gym/WebShop-v0), TauRetailEnv / TauAirlineEnv (hero_gym/TauRetail-v0, "
                     "hero_gym/TauAirline-v0) and LookupEnv (hero_gym/Lookup-v0)")


class ExpertPolicy:
    """A :class:`~hero_gym.agents.rollout.collect` policy that plays an expert in ONE env instance.

    ``generate`` must get exactly one context (collect it with ``envs=<that env instance>``); it returns
    the expert's action (or, with probability ``noise``, a noisy one) as token ids closed by the chat
    template's end-of-turn token, so ``collect`` records token-exact contexts around it. ``noisy`` lists,
    per ``generate`` call in order, whether that action was noise.
    """

    def __init__(self, env: Any, tokenizer: Any, *, noise: float = 0.0, seed: int = 0):
        self.env = env
        self.tokenizer = tokenizer
        self.expert = make_expert(env)
        self.renderer = ChatRenderer(tokenizer)
        if self.renderer.end_of_turn_id is None:
            raise ValueError("ExpertPolicy needs a chat template with an end-of-turn token")
        self.noise = float(noise)
        self.rng = random.Random(seed)
        self.noisy: list[bool] = []
        self.truncated = 0

    def generate(self, contexts: Sequence[Sequence[int]], sampling: Any = None, *,
                 max_new_tokens: Sequence[int] | None = None) -> list[Generation]:
        if len(contexts) != 1:
            raise ValueError("ExpertPolicy plays one env: collect with envs=<the env instance it was built on>")
        noisy = self.noise > 0 and self.rng.random() < self.noise
        text = self.expert.noisy_action(self.rng) if noisy else self.expert.action()
        self.noisy.append(noisy)
        ids = self.renderer.encode(text) + [int(self.renderer.end_of_turn_id)]
        cap = getattr(sampling, "max_new_tokens", None)
        if max_new_tokens is not None:
            cap = min(cap, int(max_new_tokens[0])) if cap is not None else int(max_new_tokens[0])
        reason = "stop"
        if cap is not None and len(ids) > cap:
            ids, reason = ids[:cap], "length"
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            self.truncated += 1
        return [Generation(token_ids=ids, logprobs=[0.0] * len(ids), text=text, finish_reason=reason)]
