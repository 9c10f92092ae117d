"""User simulators: a deterministic scripted user (no model) and an LLM user (any chat function).

Both implement :class:`UserSimulator`: ``reset(task, ctx, seed) -> first message`` and
``reply(agent_message) -> str``. A reply containing ``###STOP###`` ends the episode.

Scripted user — what it knows and how it answers
------------------------------------------------
It answers from the task alone: identity details from the user record (email, name + zip,
user id), and from the gold actions the order / reservation ids, items (with names and options),
cancellation reasons, payment methods, addresses, passengers, flights, bags, insurance and cabin.
It picks the facts to give by keywords in the agent's message, confirms ("yes") whenever asked
to confirm or proceed, says it does not know anything else, and stops (``###STOP###``) as soon as
the goal is reached (the env reports that the database equals the gold database and every
required output was said), after ``max_replies`` replies, or after ``max_unknown`` replies in a
row that it could not answer (or that repeat its previous reply word for word).

Limits (documented on purpose): keyword matching, not understanding; it confirms any action it is
asked to confirm, including wrong ones; it gives ids rather than natural descriptions when asked
about items; it never changes its mind, follows no persona, and its first message states the
whole request (the write intents of the gold actions, or a pronoun-swapped instruction when the
task needs no write). It is meant for plumbing, tests, demos and cheap RL warm-up — report
headline numbers with an LLM user.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .data import Task

STOP = "###STOP###"


@dataclass
class UserContext:
    """What the env lets the user simulator see about the episode."""

    domain: str
    user_record: dict[str, Any] | None
    goal_reached: Callable[[], bool] = lambda: False
    executed_calls: list[dict[str, Any]] = field(default_factory=list)   # {"name","arguments","ok"}


class UserSimulator(Protocol):
    def reset(self, task: Task, ctx: UserContext, seed: int | None = None) -> str: ...
    def reply(self, agent_message: str) -> str: ...


# ================================================================ scripted user
_CONFIRM_WORDS = ("confirm", "proceed", "yes/no", "(yes", "go ahead", "shall i", "should i",
                  "would you like me to", "do you want me to", "is that correct", "is this correct",
                  "can you verify", "ok to", "okay to")
_WRITE_INTENTS = {
    "cancel_pending_order": "cancel my order {order_id}",
    "modify_pending_order_address": "change the shipping address of my order {order_id}",
    "modify_pending_order_items": "change some items in my pending order {order_id}",
    "modify_pending_order_payment": "change the payment method of my order {order_id}",
    "modify_user_address": "update my default address",
    "return_delivered_order_items": "return some items from my order {order_id}",
    "exchange_delivered_order_items": "exchange some items from my order {order_id}",
    "book_reservation": "book a {trip} flight from {origin} to {destination}",
    "cancel_reservation": "cancel my reservation {reservation_id}",
    "update_reservation_flights": "change the flights of my reservation {reservation_id}",
    "update_reservation_baggages": "change the checked bags on my reservation {reservation_id}",
    "update_reservation_passengers": "update the passenger details on my reservation {reservation_id}",
    "send_certificate": "get a compensation for the trouble with my flight",
}
_PRONOUNS = [(r"\b(ask|asks|tell|tells|give|gives|help|helps|let|lets|send|sends|offer|offers|for|to|with) you\b",
              r"\1 me"),
             (r"\byou are\b", "I am"), (r"\byou were\b", "I was"), (r"\byou're\b", "I'm"),
             (r"\byour\b", "my"), (r"\byours\b", "mine"), (r"\byourself\b", "myself"), (r"\byou\b", "I")]


def _swap_pronouns(text: str) -> str:
    out = text
    for pat, rep in _PRONOUNS:
        out = re.sub(pat, rep, out, flags=re.IGNORECASE)
    return out


def _fmt_address(kw: dict[str, Any]) -> str:
    parts = [kw.get("address1", ""), kw.get("address2", ""), kw.get("city", ""), kw.get("state", ""),
             kw.get("zip", ""), kw.get("country", "")]
    return ", ".join(str(p) for p in parts if p)


class ScriptedUser:
    """Deterministic rule-based user (see the module docstring for what it can and cannot do)."""

    def __init__(self, max_replies: int = 25, max_unknown: int = 4):
        self.max_replies = max_replies
        self.max_unknown = max_unknown

    # ------------------------------------------------------------------ episode
    def reset(self, task: Task, ctx: UserContext, seed: int | None = None) -> str:
        self.task, self.ctx = task, ctx
        self.n_replies = 0
        self.n_unknown = 0
        self.stopped = False
        self.last_reply = None
        self.writes = [a for a in task.actions if a.name in _WRITE_INTENTS]
        return self._opening()

    def _intent(self, a) -> str:
        kw = dict(a.kwargs)
        if a.name == "book_reservation":
            kw["trip"] = "one-way" if kw.get("flight_type") == "one_way" else "round-trip"
        try:
            return _WRITE_INTENTS[a.name].format(**kw)
        except (KeyError, IndexError):
            return _WRITE_INTENTS[a.name].split(" {")[0]

    def _opening(self) -> str:
        intents = []
        for a in self.writes:
            i = self._intent(a)
            if i not in intents:
                intents.append(i)
        if intents:
            return "Hi! I'd like to " + self._join(intents) + "."
        # no write needed: restate the request in the first person (persona sentences dropped)
        sentences = [x.strip() for x in re.split(r"(?<=[.!?])\s+", self.task.instruction) if x.strip()]
        keep = [x for x in sentences if not re.match(r"(?i)^(you are|your name|your user id|your email|your zip)", x)]
        body = _swap_pronouns(" ".join(keep[:3]))
        return ("Hi! " + body) if body else "Hi! I have a question."

    @staticmethod
    def _join(items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    # ------------------------------------------------------------------ facts
    def _kw_values(self, key: str) -> list[Any]:
        vals = []
        for a in self.task.actions:
            if key in a.kwargs and a.kwargs[key] not in vals:
                vals.append(a.kwargs[key])
        return vals

    def _identity(self, msg: str) -> list[str]:
        rec = self.ctx.user_record or {}
        name = rec.get("name", {})
        full = f"{name.get('first_name', '')} {name.get('last_name', '')}".strip()
        zipc = rec.get("address", {}).get("zip", "")
        gold_names = {a.name for a in self.task.actions}
        out = []
        if "user id" in msg or "user_id" in msg or "userid" in msg:
            out.append(f"My user id is {self.task.user_id}.")
        if "email" in msg:
            if self.ctx.domain == "retail" and "find_user_id_by_email" not in gold_names \
                    and "find_user_id_by_name_zip" in gold_names:
                out.append(f"I don't remember my email, but my name is {full} and my zip code is {zipc}.")
            elif rec.get("email"):
                out.append(f"My email is {rec['email']}.")
        if ("zip" in msg or "name" in msg or "postal" in msg) and not any("zip code is" in o for o in out):
            if "zip" in msg or "postal" in msg or self.ctx.domain == "retail":
                out.append(f"My name is {full} and my zip code is {zipc}.")
            else:
                out.append(f"My name is {full}.")
        if ("date of birth" in msg or "birthday" in msg or "dob" in msg) and rec.get("dob"):
            out.append(f"My date of birth is {rec['dob']}.")
        return out

    def _details(self, msg: str) -> list[str]:
        out = []
        ids = self._kw_values("order_id")
        if ids and ("order" in msg and ("id" in msg or "number" in msg or "which" in msg)):
            out.append(f"The order id is {self._join([str(i) for i in ids])}.")
        rids = self._kw_values("reservation_id")
        if rids and "reservation" in msg and ("id" in msg or "number" in msg or "code" in msg or "which" in msg):
            out.append(f"The reservation id is {self._join([str(i) for i in rids])}.")
        if "reason" in msg or "why" in msg:
            reasons = self._kw_values("reason")
            out.append(f"The reason is: {reasons[0]}." if reasons else "It's a change of plan.")
        if "item" in msg or "product" in msg or "which one" in msg or "exchange" in msg or "return" in msg:
            for a in self.writes:
                if "item_ids" in a.kwargs:
                    olds = ", ".join(a.kwargs["item_ids"])
                    txt = f"For order {a.kwargs.get('order_id')}, the items are {olds}"
                    if "new_item_ids" in a.kwargs:
                        txt += f", to be replaced by {', '.join(a.kwargs['new_item_ids'])}"
                    out.append(txt + ".")
        if any(w in msg for w in ("payment", "pay ", "pay?", "refund", "card", "paypal", "certificate")):
            pms = self._kw_values("payment_method_id") + self._kw_values("payment_id")
            for a in self.writes:
                for pm in a.kwargs.get("payment_methods", []) or []:
                    if isinstance(pm, dict):
                        pms.append(f"{pm.get('payment_id')} (amount {pm.get('amount')})")
            if pms:
                out.append(f"Please use {self._join([str(p) for p in dict.fromkeys(pms)])}.")
        if "address" in msg:
            for a in self.writes:
                if "address1" in a.kwargs:
                    out.append(f"The address is {_fmt_address(a.kwargs)}.")
                    break
        if "passenger" in msg or "traveler" in msg or "traveller" in msg:
            for a in self.writes:
                if a.kwargs.get("passengers"):
                    ps = "; ".join(f"{p.get('first_name')} {p.get('last_name')}, born {p.get('dob')}"
                                   for p in a.kwargs["passengers"] if isinstance(p, dict))
                    out.append(f"The passengers are: {ps}.")
                    break
        if "flight" in msg or "date" in msg or "itinerary" in msg:
            for a in self.writes:
                if a.kwargs.get("flights"):
                    fs = ", ".join(f"{f.get('flight_number')} on {f.get('date')}" for f in a.kwargs["flights"]
                                   if isinstance(f, dict))
                    out.append(f"The flights are {fs}.")
                    break
        if "bag" in msg or "luggage" in msg:
            for a in self.writes:
                if "total_baggages" in a.kwargs:
                    out.append(f"{a.kwargs['total_baggages']} checked bags in total, "
                               f"{a.kwargs.get('nonfree_baggages', 0)} of them paid.")
                    break
        if "insurance" in msg:
            ins = self._kw_values("insurance")
            if ins:
                out.append("Yes, I want travel insurance." if ins[0] == "yes" else "No insurance, thanks.")
        if "cabin" in msg or "class" in msg:
            cab = self._kw_values("cabin")
            if cab:
                out.append(f"The cabin is {str(cab[0]).replace('_', ' ')}.")
        if ("trip" in msg or "one way" in msg or "round" in msg) and self._kw_values("flight_type"):
            out.append(f"It's a {str(self._kw_values('flight_type')[0]).replace('_', ' ')} trip.")
        return out

    def _remaining_intents(self) -> list[str]:
        done = [(c["name"], c["arguments"]) for c in self.ctx.executed_calls if c.get("ok")]
        left = []
        for a in self.writes:
            if (a.name, a.kwargs) in done:
                done.remove((a.name, a.kwargs))
                continue
            i = self._intent(a)
            if i not in left:
                left.append(i)
        return left

    # ------------------------------------------------------------------ reply
    def reply(self, agent_message: str) -> str:
        if self.stopped:
            return STOP
        self.n_replies += 1
        msg = (agent_message or "").lower()
        if self.ctx.goal_reached():
            return self._stop("Thank you, that's everything I needed.")
        if self.n_replies > self.max_replies:
            return self._stop("I have to go now.")
        if "human" in msg and "transfer" in msg:
            return "Okay."
        parts = self._identity(msg) + self._details(msg)
        confirm = any(w in msg for w in _CONFIRM_WORDS)
        if confirm:
            parts.append("Yes, please go ahead.")
        if not parts and ("anything else" in msg or "help you" in msg or "how can i" in msg):
            left = self._remaining_intents()
            parts.append(("I still need you to " + self._join(left) + ".") if left
                         else "No, that's all, thank you.")
        if not parts:
            self.n_unknown += 1
            if self.n_unknown >= self.max_unknown:
                return self._stop("I don't think we're getting anywhere.")
            return "Sorry, I don't know that."
        text = " ".join(parts)
        # saying the same thing again and again is no progress either
        self.n_unknown = self.n_unknown + 1 if (text == self.last_reply and not confirm) else 0
        self.last_reply = text
        if self.n_unknown >= self.max_unknown:
            return self._stop("I don't think we're getting anywhere.")
        return text

    def _stop(self, text: str) -> str:
        self.stopped = True
        return f"{text} {STOP}"


# ================================================================ LLM user
LLM_USER_RULES = """You are playing a customer who contacts a customer-service agent. Stay in this role for the whole conversation.

Your situation and goal (only you know this; the agent does not):
{instruction}

How to behave:
- Write one short message at a time, the way a real customer types in a chat.
- Share only what the agent needs for the current step; do not hand over everything at once.
- Never make up facts (ids, numbers, addresses, names) that your situation does not give you. If you are asked for something you do not know, say that you do not know it.
- Put your goal in your own words instead of copying the text above.
- Keep to the personality the situation describes.
- When your goal is fully handled (or it clearly cannot be), reply with exactly ###STOP### and nothing else."""


class LLMUser:
    """A user simulator driven by any chat function ``messages -> str``.

    ``messages`` are OpenAI-style dicts from the *user's* point of view: the system prompt holds
    the instruction and the rules; the agent's messages come as role "user" and the simulator's
    own earlier replies as role "assistant". If ``chat_fn`` accepts a ``seed`` keyword it gets a
    per-turn seed derived from the episode seed, so runs are reproducible with a seeded backend.
    """

    def __init__(self, chat_fn: Callable[..., str], rules: str = LLM_USER_RULES,
                 opening: str = "Hi! How can I help you today?"):
        if not callable(chat_fn):
            raise TypeError("chat_fn must be callable: messages -> str")
        self.chat_fn = chat_fn
        self.rules = rules
        self.opening = opening
        try:
            params = inspect.signature(chat_fn).parameters
            self._takes_seed = "seed" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            self._takes_seed = False

    def _call(self) -> str:
        msgs = [dict(m) for m in self.messages]
        if self._takes_seed:
            seed = None if self.seed is None else self.seed * 1000 + self.n_calls
            out = self.chat_fn(msgs, seed=seed)
        else:
            out = self.chat_fn(msgs)
        self.n_calls += 1
        text = str(out if out is not None else "").strip()
        if STOP in text:
            text = STOP
        self.messages.append({"role": "assistant", "content": text})
        return text

    def reset(self, task: Task, ctx: UserContext, seed: int | None = None) -> str:
        self.seed = seed
        self.n_calls = 0
        self.messages = [{"role": "system", "content": self.rules.format(instruction=task.instruction)},
                         {"role": "user", "content": self.opening}]
        return self._call()

    def reply(self, agent_message: str) -> str:
        self.messages.append({"role": "user", "content": agent_message})
        return self._call()


def make_user(spec: Any, chat_fn: Callable[..., str] | None = None) -> UserSimulator:
    """``"scripted"`` | ``"llm"`` (needs ``chat_fn``) | a simulator instance | a chat function."""
    if spec is None or spec == "scripted":
        return ScriptedUser()
    if spec == "llm":
        if chat_fn is None:
            raise ValueError("user='llm' needs user_chat_fn=<callable messages -> str>")
        return LLMUser(chat_fn)
    if hasattr(spec, "reset") and hasattr(spec, "reply"):
        return spec
    if callable(spec):
        return LLMUser(spec)
    raise ValueError(f"unknown user simulator {spec!r}; use 'scripted', 'llm' or an instance")
