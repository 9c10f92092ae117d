"""TRL's multi-turn rollouts as hero-gym :class:`~hero_gym.records.Episode` records.

TRL's ``GRPOTrainer`` tool loop (``trl==1.16.0``, ``_tool_call_loop``) returns, per rollout, one flat
``completion_ids`` list after the prompt and a ``tool_mask`` of the same length: ``1`` on tokens the model
sampled, ``0`` on the tokens TRL spliced in after each tool-calling reply (the rest of the chat template's
turn, the tool results as the template renders them, and the next generation prompt). So

    prompt_ids + completion_ids = P + A_0 + S_0 + A_1 + S_1 + ... + A_K

where each ``A_k`` is a maximal run of ``1``\\s (one assistant reply) and each ``S_k`` a run of ``0``\\s. The
context the model saw before reply ``k`` is ``P + A_0 + S_0 + ... + S_{k-1}``, which ends with the generation
prompt, exactly the token-exact context a hero-gym rollout records (:mod:`hero_gym.chat`). :func:`action_spans`
finds the runs; :func:`rollout_to_episode` builds one :class:`~hero_gym.records.Turn` per reply.

Alignment with the env. Each reply ``k`` is followed, in TRL's message list, by one ``tool`` message per tool
call it made; a call that reached the env is one env step (recorded by
:class:`~hero_gym.adapters.trl.HeroGymTRLEnv` as an :class:`~hero_gym.adapters.trl.EnvStep`, matched here in
order by its observation text), a call TRL could not run (bad arguments, the episode already over) is a tool
error that took no env step. A turn's observation is its tool messages joined by newlines. Differences from a
hero-gym rollout, which follow from TRL's protocol:

* a reply with no tool call ends TRL's rollout; while the env episode is still running it becomes a turn with
  ``action_error = {"kind": "no_tool_call", ...}`` and an empty observation (the rule reflector calls it an
  execution error);
* replies after the env episode ended (a closing message after the final tool result) are not turns: they
  belong to no env step, so no note is given for them and they are not distilled;
* a reply with several tool calls is one turn with several env steps (reward summed, the first error kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hero_gym.records import Episode, Turn

__all__ = ["action_spans", "rollout_to_episode", "NO_TOOL_CALL", "TOOL_ERROR"]

NO_TOOL_CALL = "no_tool_call"
"""``action_error["kind"]`` of a reply that called no tool (TRL ends the rollout there)."""
TOOL_ERROR = "tool_error"
"""``action_error["kind"]`` of a tool call TRL could not run (it never reached the env)."""


def action_spans(tool_mask: Sequence[int] | None, length: int) -> list[tuple[int, int]]:
    """``(start, end)`` of every maximal run of ``1``\\s in ``tool_mask`` (the model's replies), in order.

    ``tool_mask=None`` (no tools: a single-turn completion) is one span over all ``length`` tokens.
    """
    if tool_mask is None:
        return [(0, length)] if length else []
    if len(tool_mask) != length:
        raise ValueError(f"tool_mask has {len(tool_mask)} entries for {length} completion tokens")
    spans: list[tuple[int, int]] = []
    start = None
    for i, m in enumerate(tool_mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, length))
    return spans


def _replies(messages: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``(assistant message, the tool messages after it)`` per reply, in order."""
    out: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for m in messages:
        if m.get("role") == "assistant":
            out.append((m, []))
        elif m.get("role") == "tool" and out:
            out[-1][1].append(m)
    return out


def _call_dict(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function", call)
    return {"name": fn.get("name"), "arguments": fn.get("arguments", {})}


def _content(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, list):   # multimodal blocks: keep the text parts
        return "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return "" if c is None else str(c)


def rollout_to_episode(
    *,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    tool_mask: Sequence[int] | None,
    messages: Sequence[dict[str, Any]],
    decode: Any,
    env: Any | None = None,
    logprobs: Sequence[float] | None = None,
    env_id: str = "trl",
    task_id: str | None = None,
    system_prompt: str | None = None,
    initial_observation: str = "",
    metadata: dict[str, Any] | None = None,
) -> Episode:
    """One TRL rollout as an :class:`~hero_gym.records.Episode` (see the module docstring).

    Args:
        prompt_ids, completion_ids, tool_mask: one row of TRL's generation output (unpadded).
        messages: TRL's completion messages of that row (assistant replies, each followed by its tool messages).
        decode: ``ids -> text`` (the action text of a turn; the ids are what training uses).
        env: the rollout's :class:`~hero_gym.adapters.trl.HeroGymTRLEnv` (its recorded steps give rewards,
            parsed actions, errors, flags and infos); ``None``: turns are built from the messages alone.
        logprobs: the behaviour log-prob of each completion token (NaN where unknown), or ``None``.
        env_id, task_id, system_prompt, initial_observation, metadata: copied into the episode.

    Raises ``ValueError`` when the number of replies in ``messages`` and of model-token runs in ``tool_mask``
    differ (the rollout is not one TRL produced).
    """
    spans = action_spans(tool_mask, len(completion_ids))
    replies = _replies(messages)
    if len(replies) != len(spans):
        raise ValueError(f"the rollout has {len(spans)} runs of model tokens in tool_mask but {len(replies)} "
                         "assistant messages; it does not come from TRL's tool loop")
    steps = list(env.steps) if env is not None else []
    cursor = 0
    ended = False
    turns: list[Turn] = []
    prompt = list(prompt_ids)
    comp = list(completion_ids)
    for k, ((start, end), (reply, tool_msgs)) in enumerate(zip(spans, replies)):
        if ended:
            break   # replies after the env episode ended belong to no env step
        calls = [_call_dict(c) for c in reply.get("tool_calls") or []]
        matched = []
        parsed, error = None, None
        for j, tm in enumerate(tool_msgs):
            text = _content(tm)
            if cursor < len(steps) and steps[cursor].observation == text:
                st = steps[cursor]
                cursor += 1
                matched.append(st)
                parsed = parsed or st.info.get("parsed_action")
                error = error or st.info.get("action_error")
            elif env is not None or text.startswith("{'error'"):
                error = error or {"kind": TOOL_ERROR, "message": text}
                if parsed is None and j < len(calls):
                    parsed = calls[j]
            elif parsed is None and j < len(calls):
                parsed = calls[j]
        if not calls:
            error = {"kind": NO_TOOL_CALL, "message": "The reply called no tool, so the rollout ended here, before "
                                                      "the environment finished the episode."}
        last = matched[-1] if matched else None
        ended = bool(last is not None and (last.terminated or last.truncated))
        lp = None
        if logprobs is not None:
            lp = [float(x) for x in logprobs[start:end]]
            if all(math.isnan(x) for x in lp):
                lp = None
        turns.append(Turn(
            index=k, action_text=decode(comp[start:end]), parsed_action=parsed, action_error=error,
            observation="\n".join(_content(tm) for tm in tool_msgs), observation_role="tool",
            reward=sum(s.reward for s in matched), terminated=bool(last and last.terminated),
            truncated=bool(last and last.truncated), info=dict(last.info) if last is not None else {},
            context_token_ids=prompt + comp[:start], action_token_ids=comp[start:end], action_logprobs=lp))
    success = any(bool(s.info.get("success")) for s in steps[:cursor])
    total = float(env.reward) if env is not None else sum(t.reward for t in turns)
    return Episode(env_id=env_id, task_id=task_id, system_prompt=system_prompt,
                   initial_observation=initial_observation, turns=turns, total_reward=total, success=success,
                   metadata={"source": "trl", "env_steps": cursor, **(metadata or {})})
