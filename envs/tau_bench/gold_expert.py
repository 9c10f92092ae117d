"""An expert that plays a task's gold actions through the env, talking to the user like an agent would.

It asks the user to identify themselves, makes the gold read calls, announces every gold write
and asks for confirmation before making it, then tells the user the required outputs and asks
whether anything else is needed until the user stops. It is a test of the plumbing and of the
scripted user (and a quick sanity check of a new dataset), not a baseline.
"""

from __future__ import annotations

import json
from typing import Any

from hero_gym.core import TextMessage
from hero_gym.tools import ToolCall

from .common import TRANSFER_TOOL


def play_gold(env: Any, seed: int | None = 0, options: dict | None = None, max_followups: int = 3) -> dict[str, Any]:
    """Run one episode with the gold-playing agent; returns a summary dict."""
    base = env.unwrapped
    obs, info = env.reset(seed=seed, options=options)
    task = base.task
    transcript = [("user", obs)]
    writes = {t.name for t in base.tool_list if t.writes}
    identity_kw = {}
    for a in task.actions:
        if a.name in ("find_user_id_by_email", "find_user_id_by_name_zip"):
            identity_kw = dict(a.kwargs)   # the last lookup is the one that succeeds in v1 tasks

    def send(action):
        nonlocal done, reward, last_info
        o, r, term, trunc, inf = env.step(action)
        transcript.append(("agent", action.content if isinstance(action, TextMessage) else
                           f"{action.name}({json.dumps(action.arguments)})"))
        transcript.append((inf.get("observation_role", "?"), o))
        done, reward, last_info = term or trunc, r, inf
        return o

    done, reward, last_info = False, 0.0, info
    if base.domain == "retail":
        ask = "To get started, could you please give me your email address, or your name and zip code?"
    else:
        ask = "To get started, could you please give me your user id?"
    reply = send(TextMessage(ask))
    identity_given = all(str(v).lower() in reply.lower() for v in identity_kw.values()) if identity_kw else \
        (task.user_id in reply or base.domain == "retail")
    for a in task.actions:
        if done:
            break
        if a.name in writes:
            args = json.dumps(a.kwargs)
            reply = send(TextMessage(f"I am going to call {a.name} with {args}. Do you confirm (yes/no)?"))
            if done:
                break
        send(ToolCall(name=a.name, arguments=dict(a.kwargs)))
        if a.name == TRANSFER_TOOL:
            break
    if not done:
        msg = "All done."
        if task.outputs:
            msg = "Here is what you asked for: " + ", ".join(task.outputs) + "."
        send(TextMessage(msg + " Is there anything else I can help you with?"))
    n = 0
    while not done and n < max_followups:
        n += 1
        send(TextMessage("Is there anything else I can help you with?"))
    rinfo = last_info.get("reward_info") or {}
    return {"task_id": task.task_id, "reward": reward, "success": bool(last_info.get("success")), "done": done,
            "turns": base.turn,
            "end_reason": last_info.get("end_reason"), "identity_given": identity_given,
            "reward_info": rinfo, "transcript": transcript}
