"""A state-based expert that plays a task's gold actions through the env, talking to the user like an agent.

:class:`GoldExpert` reads the env's current state and returns the next action of one fixed conversation
plan: ask the user to identify themselves, make the gold read calls, announce every gold write and ask
for confirmation before making it, then tell the user the required outputs and ask whether anything
else is needed until the user stops. Because it reads the state rather than following a script, it can
take over from any state an episode reached (e.g. after another policy's wrong calls it continues with
the first gold action not done yet); that is what the warm start's DAgger labels need
(:mod:`hero_gym.agents.warmstart`). :func:`play_gold` plays whole episodes with it.

It is privileged (it knows the gold actions): a test of the plumbing and of the scripted user, a
sanity check of a new dataset and a demonstrator for behaviour cloning, not a baseline.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Literal

from hero_gym.core import TextMessage
from hero_gym.tools import ToolCall

from .common import TRANSFER_TOOL, is_error_observation
from .reward import gold_result

__all__ = ["FOLLOWUP", "GoldExpert", "PlanStep", "play_gold"]

FOLLOWUP = "Is there anything else I can help you with?"
_IDENTITY_CALLS = ("find_user_id_by_email", "find_user_id_by_name_zip")
_NOT_READS = {TRANSFER_TOOL, "think", "calculate"}   # never a "wrong read" noise call
_NOISE_MESSAGES = ("Could you please repeat your request?", "I have taken care of everything for you.")

Phase = Literal["identity", "read", "confirm", "write", "outputs", "followup"]


@dataclass(frozen=True)
class PlanStep:
    """The expert's next move: its ``phase`` in the plan, the action, and the gold action it serves
    (index in ``task.actions``; ``None`` for identity, outputs and follow-up messages)."""

    phase: Phase
    action: ToolCall | TextMessage
    gold_index: int | None = None


class GoldExpert:
    """The gold-action expert of ``env`` (a Tau-bench env or a wrapper of one).

    It is asked after a ``reset``/``step`` of that same env (one instance serves successive episodes:
    it reloads the task's facts when the task changes); it is deterministic given the state. The state
    it reads (all on the unwrapped env): the task's gold ``actions``;
    ``executed_calls`` (which gold calls already ran and whether they succeeded); ``history`` (the
    ordered well-formed actions with their observations: whether the user gave their identity, whether
    the last message asked to confirm the next write and the user said yes); ``agent_messages``
    (which of the expert's own messages were already sent).

    Rules, first match wins:

    1. **identity**: the identity was neither asked for by the expert, nor given by the user, nor
       looked up by a successful gold identity call -> ask for it (email or name + zip in retail, the
       user id in airline).
    2. the first gold action not done yet (gold action *i* is done when an executed call with the same
       name and arguments, not matched to an earlier gold action, succeeded, or failed as the gold
       replay's call fails too, or failed twice: a call is retried once, never looped on):

       * a **read** (or the transfer) -> make the call;
       * a **write** -> make the call if the last action was a message naming it and the user's reply
         said yes (**write**), otherwise announce it with its arguments and ask for confirmation
         (**confirm**).
    3. **outputs**: every gold action done and the closing message not sent yet -> tell the required
       outputs (or "All done.") and ask whether anything else is needed.
    4. **followup**: ask again whether anything else is needed (the scripted user stops when the goal
       is reached).

    ``action()`` renders the step as text the env's parser reads (a Hermes ``<tool_call>`` block for
    the ``hermes``/``auto`` parsers, a JSON object for ``json``); ``noisy_action(rng)`` is a plausible
    mistake (see there).
    """

    def __init__(self, env: Any):
        self.env = env.unwrapped
        self.writes = {t.name for t in self.env.tool_list if t.writes}
        self._task: Any = None

    def _sync(self) -> None:
        """Load the per-task plan facts when the env's task changed (the expert may outlive a reset)."""
        task = self.env.task
        if task is None:
            raise ValueError("GoldExpert reads the env's state: reset the env first")
        if task is self._task:
            return
        self._task = task
        self.identity_kw: dict[str, Any] = {}
        for a in task.actions:
            if a.name in _IDENTITY_CALLS:
                self.identity_kw = dict(a.kwargs)   # the last lookup is the one that succeeds in v1 tasks
        if self.env.domain == "retail":
            self.identity_ask = ("To get started, could you please give me your email address, "
                                 "or your name and zip code?")
        else:
            self.identity_ask = "To get started, could you please give me your user id?"
        self.closing = (("Here is what you asked for: " + ", ".join(task.outputs) + ".") if task.outputs
                        else "All done.") + " " + FOLLOWUP
        # which gold calls fail in the gold replay itself (transfers are not replayed and never fail)
        observations = iter(gold_result(self.env.dataset, self.env.tool_map, task).observations)
        self.gold_fails = [False if a.name == TRANSFER_TOOL else is_error_observation(next(observations, ""))
                           for a in task.actions]

    @property
    def task(self) -> Any:
        """The env's current task (its gold ``actions``, ``outputs`` and ``user_id``)."""
        self._sync()
        return self._task

    # ------------------------------------------------------------------ state
    @staticmethod
    def confirm_text(name: str, kwargs: dict[str, Any]) -> str:
        """The message that announces write ``name`` with its arguments and asks to confirm it."""
        return f"I am going to call {name} with {json.dumps(kwargs)}. Do you confirm (yes/no)?"

    def done(self) -> list[bool]:
        """Per gold action, whether the episode has done it (see rule 2 of the class docstring)."""
        self._sync()
        calls = self.env.executed_calls
        used = [False] * len(calls)
        out = []
        for i, a in enumerate(self.task.actions):
            matches = [j for j, c in enumerate(calls)
                       if not used[j] and c["name"] == a.name and c["arguments"] == a.kwargs]
            ok = [j for j in matches if calls[j]["ok"]]
            # the calls that count for this gold action: one success, one expected failure, or two failures
            spent = ok[:1] or (matches[:1] if self.gold_fails[i] else matches[:2] if len(matches) >= 2 else [])
            for j in spent:
                used[j] = True
            out.append(bool(spent))
        return out

    def identity_known(self) -> bool:
        """Whether the expert asked for the identity, the user gave it, or a gold lookup found it."""
        self._sync()
        if self.identity_ask in self.env.agent_messages:
            return True
        if any(c["ok"] and c["name"] in _IDENTITY_CALLS for c in self.env.executed_calls):
            return True
        return any(isinstance(act, TextMessage) and self.identity_in(reply) for act, reply in self.env.history)

    def identity_in(self, reply: str) -> bool:
        """Whether a user reply holds the identity the gold calls use (the user id in airline)."""
        self._sync()
        low = reply.lower()
        if self.identity_kw:
            return all(str(v).lower() in low for v in self.identity_kw.values())
        return self.task.user_id is not None and str(self.task.user_id).lower() in low

    def _confirmed(self, name: str) -> bool:
        if not self.env.history:
            return False
        act, reply = self.env.history[-1]
        return isinstance(act, TextMessage) and name in act.content and "yes" in reply.lower()

    # ------------------------------------------------------------------ plan
    def next_step(self) -> PlanStep:
        """The expert's next move in the current state (see the class docstring)."""
        self._sync()
        if not self.identity_known():
            return PlanStep("identity", TextMessage(self.identity_ask))
        for i, (a, is_done) in enumerate(zip(self.task.actions, self.done())):
            if is_done:
                continue
            call = ToolCall(name=a.name, arguments=dict(a.kwargs))
            if a.name not in self.writes:
                return PlanStep("read", call, i)
            if self._confirmed(a.name):
                return PlanStep("write", call, i)
            return PlanStep("confirm", TextMessage(self.confirm_text(a.name, a.kwargs)), i)
        if self.closing not in self.env.agent_messages:
            return PlanStep("outputs", TextMessage(self.closing))
        return PlanStep("followup", TextMessage(FOLLOWUP))

    def render(self, action: ToolCall | TextMessage) -> str:
        """``action`` as reply text the env's parser turns back into it."""
        if isinstance(action, TextMessage):
            return action.content
        obj = json.dumps({"name": action.name, "arguments": action.arguments})
        if self.env.parser in ("hermes", "auto"):
            return "<tool_call>\n" + obj + "\n</tool_call>"
        if self.env.parser == "json":
            return obj
        raise ValueError(f"GoldExpert renders calls for the hermes, auto and json parsers, not {self.env.parser!r}")

    def action(self) -> str:
        """The next action as text (see :meth:`next_step`)."""
        return self.render(self.next_step().action)

    # ------------------------------------------------------------------ noise
    def noisy_action(self, rng: random.Random) -> str:
        """A plausible mistake that differs from :meth:`action`, as text: the next (or, in the message
        phases, a random) gold call with one character of a string argument changed (a mis-copied id:
        usually a tool error, sent without asking to confirm), a read tool the plan does not call next
        with arguments taken from the task, or an off-plan message."""
        step = self.next_step()
        clean = self.render(step.action)
        kinds = ["corrupt", "wrong_read", "message"]
        rng.shuffle(kinds)
        for kind in kinds:
            if kind == "corrupt":
                out = self._corrupted_call(step, rng)
            elif kind == "wrong_read":
                out = self._wrong_read(step, rng)
            else:
                out = TextMessage(rng.choice(_NOISE_MESSAGES))
            if out is not None and self.render(out) != clean:
                return self.render(out)
        return clean + " Thanks."   # unreachable in practice: every kind matched the clean action

    def _corrupted_call(self, step: PlanStep, rng: random.Random) -> ToolCall | None:
        actions = self.task.actions
        if not actions:
            return None
        a = actions[step.gold_index] if step.gold_index is not None else rng.choice(actions)
        paths = [(k, None) for k, v in a.kwargs.items() if isinstance(v, str) and v]
        paths += [(k, n) for k, v in a.kwargs.items() if isinstance(v, list)
                  for n, x in enumerate(v) if isinstance(x, str) and x]
        if not paths or a.name == TRANSFER_TOOL:
            return None
        key, n = rng.choice(paths)
        args = json.loads(json.dumps(a.kwargs))
        value = args[key] if n is None else args[key][n]
        i = rng.randrange(len(value))
        value = value[:i] + rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz0123456789" if c != value[i]]) \
            + value[i + 1:]
        if n is None:
            args[key] = value
        else:
            args[key][n] = value
        return ToolCall(name=a.name, arguments=args)

    def _wrong_read(self, step: PlanStep, rng: random.Random) -> ToolCall | None:
        values: dict[str, Any] = {"user_id": self.task.user_id} if self.task.user_id else {}
        for a in self.task.actions:
            for k, v in a.kwargs.items():
                values.setdefault(k, v)
        current = step.action.name if isinstance(step.action, ToolCall) else None
        options = []
        for t in self.env.tool_list:
            if t.writes or t.name in _NOT_READS or t.name == current:
                continue
            if all(p in values for p in t.parameters):
                options.append(ToolCall(name=t.name, arguments={p: values[p] for p in t.parameters}))
        return rng.choice(options) if options else None


def play_gold(env: Any, seed: int | None = 0, options: dict | None = None, max_followups: int = 3) -> dict[str, Any]:
    """Run one episode with :class:`GoldExpert` (at most ``max_followups`` follow-up questions after
    the closing message); returns a summary dict (reward, success, end reason, transcript, ...)."""
    base = env.unwrapped
    obs, info = env.reset(seed=seed, options=options)
    task = base.task
    transcript = [("user", obs)]
    expert = GoldExpert(env)
    done, reward, last_info = False, 0.0, info
    identity_given = None
    followups = 0
    while not done:
        step = expert.next_step()
        if step.phase == "followup":
            if followups >= max_followups:
                break
            followups += 1
        action = step.action
        o, reward, term, trunc, last_info = env.step(action)
        done = term or trunc
        transcript.append(("agent", action.content if isinstance(action, TextMessage) else
                           f"{action.name}({json.dumps(action.arguments)})"))
        transcript.append((last_info.get("observation_role", "?"), o))
        if step.phase == "identity":
            identity_given = expert.identity_in(o) or (base.domain == "retail" and not expert.identity_kw)
    rinfo = last_info.get("reward_info") or {}
    return {"task_id": task.task_id, "reward": reward, "success": bool(last_info.get("success")), "done": done,
            "turns": base.turn,
            "end_reason": last_info.get("end_reason"), "identity_given": bool(identity_given),
            "reward_info": rinfo, "transcript": transcript}
