"""The rule-based reflector: per-turn diagnoses, and targets, from what the agent could see.

No model, no task internals: it reads observations, the visible page state (:data:`VISIBLE_INFO_KEYS`)
and the episode's own actions. Each diagnosis comes in two wordings:

* ``diagnosis`` names the kind of error and the correction without repeating the student's wrong
  argument or the env's error message ("the clicked button is not on this page"): a small
  self-teacher copies what its note quotes, so a note quoting the mistake raises its probability;
* ``echo_diagnosis``, the legacy wording, which quotes the env's message and the action (the
  ``legacy`` and ``echo_target`` note styles of :func:`~hero_gym.agents.teachers.hero_note`).

A turn judged an error also gets a *target* where one follows from visible information
(:mod:`~hero_gym.agents.targets`), written in the env's action syntax: WebShop — the instruction-following
policy's action on the page the agent was on (for an invalid click, a purchase without a requested
option, a product over the price limit, a repeat, a no-op or a failed purchase), or going back from a
product bought over the limit; Tau-bench — identifying the user before a change (the policy's first
rule): ``find_user_id_by_email`` when the user's email is in the conversation, else asking for it
(airline: ``get_user_details`` with the user id in the conversation, else asking for the user id).
Anything else gets no target.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from hero_gym.records import Episode, Turn

from . import targets as T
from .reflector import Reflection, TurnReflection, episode_unfinished, fill_target_text

__all__ = ["RuleReflector", "VISIBLE_INFO_KEYS"]

VISIBLE_INFO_KEYS = ("page", "available_actions", "no_op", "noop", "invalid_action", "invalid")
"""The only ``Turn.info`` keys the rule reflector reads: page state the agent could see. Task internals
(``info["task"]``, ``info["expected"]``, gold actions, reward breakdowns) are never read."""

_NOOP_FLAGS = ("no_op", "noop", "invalid_action", "invalid")
_WS_LISTED_PRICE = re.compile(r"\$([0-9]+(?:\.[0-9]+)?)")

# Tau-bench: the lookups that identify the user, and the tools that change the database.
_TAU_IDENTIFY = {"find_user_id_by_email", "find_user_id_by_name_zip"}
_TAU_RETAIL_WRITES = {"cancel_pending_order", "exchange_delivered_order_items", "modify_pending_order_address",
                      "modify_pending_order_items", "modify_pending_order_payment", "modify_user_address",
                      "return_delivered_order_items"}
_TAU_AIRLINE_WRITES = {"book_reservation", "cancel_reservation", "send_certificate", "update_reservation_baggages",
                       "update_reservation_flights", "update_reservation_passengers"}
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_USER_ID = re.compile(r"\b[a-z]+_[a-z]+_\d{3,5}\b")
#: the messages Tau-bench's gold expert asks the identity with (hero_gym.envs.tau_bench.gold_expert)
RETAIL_ASK_IDENTITY = "To get started, could you please give me your email address, or your name and zip code?"
AIRLINE_ASK_IDENTITY = "To get started, could you please give me your user id?"

# The execution errors, named without quoting the reply or the env's message.
_EXEC_KIND = {
    "parse": "the reply was not a well-formed action, so the environment could not read it",
    "no_action": "the reply contained no action",
    "unknown_tool": "the called tool does not exist",
    "invalid_arguments": "the call's arguments were rejected (missing, unexpected or invalid)",
    "too_many_calls": "the reply made more than one call",
    "too_long": "the reply was too long to be read",
    "env_error": "the environment failed on this reply",
}


def _visible(turn: Turn | None) -> dict[str, Any]:
    if turn is None:
        return {}
    return {k: turn.info[k] for k in VISIBLE_INFO_KEYS if k in turn.info}


def _action_key(turn: Turn) -> str | None:
    if turn.parsed_action is None:
        return None
    pa = {k: v for k, v in turn.parsed_action.items() if k != "id"}
    return json.dumps(pa, sort_keys=True, default=str)


def _describe(turn: Turn) -> str:
    """The legacy wording of an action (it quotes the call's arguments)."""
    pa = turn.parsed_action
    if pa and "name" in pa:
        args = json.dumps(pa.get("arguments", {}), sort_keys=True, default=str)
        return f"the call {pa['name']}({args})"
    if pa and "message" in pa:
        return "a plain message to the user"
    return "an action that could not be parsed"


def _student_action(turn: Turn) -> dict[str, Any] | None:
    pa = turn.parsed_action
    if not pa or turn.action_error:
        return None
    return {k: v for k, v in pa.items() if k != "id"}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _err(diagnosis: str, echo: str, confidence: str = "high") -> TurnReflection:
    return TurnReflection(diagnosis, confidence, verdict="error", echo_diagnosis=echo)  # type: ignore[arg-type]


class _WebShop:
    """WebShop rules over the visible pages (:func:`~hero_gym.agents.targets.webshop_pages`)."""

    def __init__(self, ep: Episode):
        self.ep = ep
        self.instruction = T.webshop_instruction(ep)
        self.limit = T.price_limit(self.instruction.lower())
        self.pages = T.webshop_pages(ep)

    def execution_error(self, turn: Turn) -> str | None:
        name = (turn.parsed_action or {}).get("name")
        if turn.action_error and turn.action_error.get("kind") == "unknown_tool":
            return "this kind of action is not available on this page"
        if turn.action_error and turn.action_error.get("kind") == "invalid_arguments":
            if name == "click":
                return "the clicked button is not on this page, so nothing happened"
            if name == "search":
                return "the search query was empty, so nothing happened"
        return None

    def judge(self, t: int) -> TurnReflection | None:
        """Clicks that contradict the visible instruction (price limit, requested options)."""
        turn, page = self.ep.turns[t], self.pages[t]
        target = T._click(turn)
        if target is None:
            return None
        if target == "buy now" and page.kind == "item":
            missing = T.unchosen(page, T.requested_options(page, self.instruction))
            if missing:
                opts = ", ".join(repr(o) for o in missing)
                refl = _err(f"Decision error: bought before selecting {opts}, which the instruction asks for and "
                            "the product page offers.",
                            f"Decision error: clicked buy now without selecting {opts}, which the instruction asks "
                            "for and the product page offers.")
                refl.next_action_target = {"name": "click", "arguments": {"target": missing[0]}}
                return refl
            price = page.price()
            if price is not None and self.limit is not None and price > self.limit:
                refl = _err(f"Decision error: bought at ${price:.2f}, above the instruction's price limit of "
                            f"${self.limit:.2f}; another product was needed.",
                            f"Decision error: bought at ${price:.2f}, although the instruction asks for a price "
                            f"lower than ${self.limit:.2f}.")
                refl.next_action_target = {"name": "click", "arguments": {"target": "< prev"}}
                return refl
        if page.kind == "results" and target not in T.WEBSHOP_NAV and self.limit is not None:
            price = dict(page.products()).get(target)
            if price is not None and price > self.limit:
                refl = _err(f"Decision error: opened a product listed at ${price:.2f}, above the instruction's "
                            f"price limit of ${self.limit:.2f}.",
                            f"Decision error: opened product {target.upper()}, listed at ${price:.2f}, although the "
                            f"instruction asks for a price lower than ${self.limit:.2f}.", "medium")
                better = T.bracket_action(T.instruction_action(page, self.instruction))
                under = dict(page.products()).get(str(((better or {}).get("arguments") or {}).get("target")))
                # {} = no target: the policy's pick is over the limit too
                refl.next_action_target = better if under is not None and under < self.limit else {}
                return refl
        return None

    def is_option_selection(self, t: int) -> bool:
        """A click on a product page that stays on it: the text page does not show the selection."""
        target = T._click(self.ep.turns[t])
        return (target is not None and target not in T.WEBSHOP_NAV and self.pages[t].kind == "item"
                and _visible(self.ep.turns[t]).get("page") == "item")

    def target(self, t: int) -> dict[str, Any] | None:
        """The instruction-following policy's action on the page before turn ``t``."""
        return T.bracket_action(T.instruction_action(self.pages[t], self.instruction))


class _Tau:
    """Tau-bench: a change made before the user was identified (the policy's first rule)."""

    def __init__(self, ep: Episode):
        names = {str(t.get("function", t).get("name", "")) for t in ep.tools}
        self.domain = "retail" if _TAU_IDENTIFY & names else "airline" if "book_reservation" in names else None
        self.writes = _TAU_RETAIL_WRITES if self.domain == "retail" else _TAU_AIRLINE_WRITES
        self.ep = ep

    def _identified(self, t: int) -> bool:
        for turn in self.ep.turns[:t]:
            name = (turn.parsed_action or {}).get("name")
            ok = not turn.observation.startswith(("Error", "Unknown action"))
            if ok and (name in _TAU_IDENTIFY if self.domain == "retail" else name == "get_user_details"):
                return True
        return False

    def judge(self, t: int) -> TurnReflection | None:
        turn = self.ep.turns[t]
        name = (turn.parsed_action or {}).get("name")
        if self.domain is None or turn.action_error or name not in self.writes or self._identified(t):
            return None
        how = "by email, or by name and zip code" if self.domain == "retail" else "by the user id and get_user_details"
        refl = _err(f"Decision error: a change was made before the user was identified; the policy requires "
                    f"identifying the user first ({how}).",
                    f"Decision error: {_describe(turn)} changed the records before the user was identified; the "
                    f"policy requires identifying the user first ({how}).")
        refl.next_action_target = self._identify(t)
        return refl

    def _identify(self, t: int) -> dict[str, Any]:
        said = [self.ep.initial_observation] + [x.observation for x in self.ep.turns[:t] if x.observation_role == "user"]
        if self.domain == "retail":
            emails = {m.lower() for s in said for m in _EMAIL.findall(s)}
            if len(emails) == 1:
                return {"name": "find_user_id_by_email", "arguments": {"email": emails.pop()}}
            return {"message": RETAIL_ASK_IDENTITY}
        ids = {m for s in said for m in _USER_ID.findall(s)}
        if len(ids) == 1:
            return {"name": "get_user_details", "arguments": {"user_id": ids.pop()}}
        return {"message": AIRLINE_ASK_IDENTITY}


class RuleReflector:
    """Diagnoses from what the agent could see (observations, visible page state); never needs a model
    and never reads task internals or gold data (see :data:`VISIBLE_INFO_KEYS`).

    Per turn, the first rule that fires:
      * ``action_error`` (execution error: parse / no_action / unknown_tool / invalid_arguments /
        too_many_calls) -> error, confidence high (the legacy wording quotes the env's message).
      * the same action taken again *on the same observation* -> redundant, high. (Repeating an action on
        a different page, e.g. ``click[next >]`` while paging, is not redundant.)
      * WebShop: a click that contradicts the visible instruction (buying without a requested option
        the product page offers, a price above the stated limit) -> decision error.
      * Tau-bench: a change (a write tool) before the user was identified -> decision error, high.
      * ``info`` flags ``no_op`` / ``invalid_action``, or a tool observation identical to the previous
        one (except selecting an option on a WebShop product page) -> no effect, medium.
      * the final turn of a finished episode -> the outcome (success: good, high; failure: error, medium).
        Episodes cut by a turn cap, the context window or the budget get no outcome verdict.
      * otherwise nothing (the turn is masked), or with ``diagnose_uninformative=True`` a weak note from the
        outcome (success: medium; failure: low).

    Targets (``targets=True``, the default): a turn judged an error gets a visible-information target (see
    the module docstring) with ``target_confidence="high"`` and ``target_source="visible"``, unless it is
    the action the student took. ``target_fn(episode, t) -> dict | None`` may instead supply a
    known-correct action (e.g. from an env's gold data, for oracle ablations only); it replaces the
    visible target on every turn judged an error (confidence high, ``target_source="given"``).
    """

    def __init__(self, *, diagnose_uninformative: bool = False, targets: bool = True,
                 target_fn: Callable[[Episode, int], dict[str, Any] | None] | None = None):
        self.diagnose_uninformative = diagnose_uninformative
        self.targets = targets
        self.target_fn = target_fn

    def reflect(self, episodes: Sequence[Episode]) -> list[Reflection]:
        return [Reflection(ep.episode_id, self.reflect_one(ep), source="rules") for ep in episodes]

    def reflect_one(self, ep: Episode) -> dict[int, TurnReflection]:
        out: dict[int, TurnReflection] = {}
        seen: dict[tuple[str, str], int] = {}
        webshop = _WebShop(ep) if T.is_webshop(ep) else None
        tau = _Tau(ep) if ep.tools else None
        prev_obs = ep.initial_observation
        for t, turn in enumerate(ep.turns):
            refl = self._judge(ep, t, seen, prev_obs, webshop, tau)
            if refl is not None:
                self._attach_target(ep, t, refl, webshop)
                out[t] = refl
            key = _action_key(turn)
            if key is not None and not turn.action_error:
                seen.setdefault((key, prev_obs), t)
            prev_obs = turn.observation
        fill_target_text(ep, out)
        return out

    def _attach_target(self, ep: Episode, t: int, refl: TurnReflection, webshop: _WebShop | None) -> None:
        rule_target, refl.next_action_target = refl.next_action_target, None
        if refl.verdict != "error":
            return
        if self.target_fn is not None:
            tgt = self.target_fn(ep, t)
            if tgt:
                refl.next_action_target, refl.confidence, refl.target_source = tgt, "high", "given"
            return
        if not self.targets:
            return
        if webshop is not None and rule_target is None:
            rule_target = webshop.target(t)
        if rule_target and not T.same_action(rule_target, _student_action(ep.turns[t])):
            refl.next_action_target, refl.target_confidence, refl.target_source = rule_target, "high", "visible"

    def _judge(self, ep: Episode, t: int, seen: dict[tuple[str, str], int], prev_obs: str,
               webshop: _WebShop | None, tau: _Tau | None) -> TurnReflection | None:
        turn = ep.turns[t]
        what = _describe(turn)
        key = _action_key(turn)
        if turn.action_error:
            kind = turn.action_error.get("kind", "error")
            msg = str(turn.action_error.get("message", ""))[:300]
            named = (webshop.execution_error(turn) if webshop is not None else None) or _EXEC_KIND.get(
                kind, "the environment could not act on the reply")
            act = "action the environment accepts" if webshop is not None else "call to an available tool with valid arguments"
            return _err(f"Execution error ({kind}): {named}. The turn was wasted; the reply must be a single "
                        f"well-formed {act}.",
                        f"Execution error ({kind}), not a decision the environment could act on: {msg} "
                        "The turn was wasted; the reply must be a single well-formed call to an available tool "
                        "with valid arguments.")
        if key is not None and (key, prev_obs) in seen:
            first = seen[(key, prev_obs)] + 1
            return _err(f"Redundant: this action repeats turn {first}'s action on the same observation and cannot "
                        "yield new information; a different action was needed.",
                        f"Redundant: {what} repeats turn {first} on the same observation and cannot "
                        "yield new information; a different action was needed.")
        judged = (webshop.judge(t) if webshop is not None else None) or (tau.judge(t) if tau is not None else None)
        if judged is not None:
            return judged
        flags = [f for f in _NOOP_FLAGS if _visible(turn).get(f)]
        unchanged = t > 0 and turn.observation == prev_obs and turn.observation_role == "tool"
        if flags or (unchanged and not (webshop is not None and webshop.is_option_selection(t))):
            tail = " had no effect on the environment (the observation did not change), so the turn made no progress."
            return _err("This action" + tail, _cap(what) + tail, "medium")
        if t == len(ep.turns) - 1 and not episode_unfinished(ep):
            if ep.success:
                return TurnReflection("Correct: this action completed the task successfully.", "high", verdict="good",
                                      echo_diagnosis=f"Correct: {what} completed the task successfully.")
            return _err(f"Decision error: this action ended the episode without success (reward {turn.reward:g}).",
                        f"Decision error: {what} ended the episode without success (reward {turn.reward:g}).",
                        "medium")
        if not self.diagnose_uninformative:
            return None
        if ep.success:
            return TurnReflection("Reasonable: this action was part of a trajectory that succeeded.", "medium",
                                  echo_diagnosis=f"Reasonable: {what} was part of a trajectory that succeeded.")
        return TurnReflection("No direct error signal for this action.", "low",
                              echo_diagnosis=f"No direct error signal for {what}.")
