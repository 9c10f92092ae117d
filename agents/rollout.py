"""Token-exact rollouts: many envs side by side, one batched generate call per step.

:func:`collect` runs ``num_envs`` environments at once. At every step it gathers the context ids of every
active episode, calls ``policy.generate`` once for all of them, steps each env with the decoded reply and
extends each context **incrementally**::

    context_0   = renderer.prompt_ids([system, first observation])
    context_t+1 = context_t + sampled_ids_t + renderer.continuation_ids(history, [observation_t])

so every recorded ``Turn.context_token_ids`` is exactly what the model saw, ``Turn.action_token_ids`` exactly
what it sampled (stop token included) and ``Turn.action_logprobs`` the sampling log-probs. Training reads
those ids back (:func:`hero_gym.chat.tokenize_episode`); nothing is re-tokenised. A chat template that is not
prefix-preserving makes :class:`~hero_gym.chat.ChatRenderer` raise before any rollout starts.

Cost is counted in environment turns: every ``env.step`` spends one unit of the :class:`TurnBudget`
(shared across calls, so a trainer can pass the same object to every ``collect``). When the budget runs
out, running episodes are closed and marked (``metadata["stop_reason"] == "budget"``).

Robustness: malformed replies are handled by the env (an error observation that costs a turn); an
exception raised by the env ends that episode only (``stop_reason == "env_error"``, the traceback in
``metadata["env_error"]``); a context that would exceed ``max_context_tokens`` ends the episode gracefully
(``stop_reason == "context_overflow"``). Every episode started is returned, in task order.

``Episode.metadata`` keys set here: ``stop_reason`` ("terminated" | "truncated" | "budget" |
"context_overflow" | "env_error"), ``cut_short`` (True unless the env itself ended the episode),
``system_message`` (the system message the model saw, tool descriptions included), ``group_index``
(0..group_size-1), ``context_tokens`` (length of the final context), ``env_error`` (when any).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from hero_gym.chat import ChatRenderer
from hero_gym.records import Episode, Turn

__all__ = ["TOOL_PROMPTS", "Task", "TurnBudget", "collect", "compact_tool_prompt", "default_tool_prompt"]


class Policy(Protocol):
    """What :func:`collect` needs from a policy (HFPolicy and VLLMPolicy both qualify)."""

    tokenizer: Any

    def generate(self, contexts: Sequence[Sequence[int]], sampling: Any = None, *,
                 max_new_tokens: Sequence[int] | None = None) -> list[Any]: ...


@dataclass
class TurnBudget:
    """A counter of environment turns (``env.step`` calls).

    Attributes:
        total: the budget; ``None`` means unlimited.
        spent: turns used so far (across every :func:`collect` call given this object).
    """

    total: int | None = None
    spent: int = 0

    @property
    def remaining(self) -> int:
        """Turns left (``sys.maxsize`` when unlimited)."""
        return sys.maxsize if self.total is None else max(0, self.total - self.spent)

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0

    def spend(self, n: int = 1) -> None:
        """Record ``n`` env turns."""
        self.spent += int(n)


@dataclass
class Task:
    """One task to roll out: ``env.reset(seed=seed, options=options)``. ``task_id`` groups rollouts of the
    same task (default: the env's ``info["task_id"]``, else derived from env id, seed and options)."""

    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None


# ---------------------------------------------------------------------- tool prompt

from hero_gym.parsers import CALL_FORMATS as _FORMATS  # noqa: E402  (the call-format hints live with the parsers)


def default_tool_prompt(tools: Sequence[dict[str, Any]], parser: str = "hermes") -> str:
    """The text appended to the system message when the chat template cannot take ``tools``: the tool
    schemas (one JSON object per line) and the call format the env's ``parser`` expects."""
    if not tools:
        return ""
    lines = []
    for t in tools:
        fn = t.get("function", t)
        lines.append(json.dumps({"name": fn.get("name"), "description": fn.get("description", ""),
                                 "parameters": fn.get("parameters", {})}, ensure_ascii=False))
    fmt = _FORMATS.get(parser, _FORMATS["hermes"])
    return "# Tools\nYou can use these tools:\n" + "\n".join(lines) + "\n\n" + fmt


def compact_tool_prompt(tools: Sequence[dict[str, Any]], parser: str = "hermes") -> str:
    """A short tool listing for small models and short contexts: one line per tool,
    ``name(arg: type, opt?: type) - first sentence of the description``, then the call format.

    On Tau-bench this is about a quarter of :func:`default_tool_prompt`'s tokens (the full JSON
    schemas carry long per-argument descriptions)."""
    if not tools:
        return ""
    lines = []
    for t in tools:
        fn = t.get("function", t)
        params = fn.get("parameters", {}) or {}
        required = set(params.get("required", []))
        args = ", ".join(f"{name}{'' if name in required else '?'}: {spec.get('type', 'any')}"
                         for name, spec in (params.get("properties") or {}).items())
        desc = (fn.get("description") or "").strip().split(". ")[0].rstrip(".")
        lines.append(f"- {fn.get('name')}({args})" + (f" - {desc}." if desc else ""))
    fmt = _FORMATS.get(parser, _FORMATS["hermes"])
    return "# Tools\nYou can use these tools:\n" + "\n".join(lines) + "\n\n" + fmt


TOOL_PROMPTS = {"full": default_tool_prompt, "compact": compact_tool_prompt}


# ---------------------------------------------------------------------- helpers


def _env_id(env: Any) -> str:
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(getattr(env, "unwrapped", env)).__name__


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in info.items():
        if k == "tools":
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            v = repr(v)
        out[k] = v
    return out


@dataclass
class _Slot:
    env: Any
    env_id: str
    episode: Episode | None = None
    order: int = -1
    renderer: ChatRenderer | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    context: list[int] = field(default_factory=list)


def collect(
    policy: Policy,
    envs: str | Any | Sequence[Any],
    n_episodes: int | None = None,
    *,
    tasks: Sequence[Task | dict[str, Any]] | None = None,
    group_size: int = 1,
    sampling: Any | None = None,
    budget: TurnBudget | int | None = None,
    turn_budget: TurnBudget | int | None = None,
    max_context_tokens: int | None = None,
    num_envs: int = 8,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    system_prompt: str | None = None,
    tool_prompt: Callable[[Sequence[dict[str, Any]], str], str] | None = default_tool_prompt,
    progress: bool = False,
) -> list[Episode]:
    """Roll out episodes with ``policy`` and return them (task order; groups are consecutive).

    Args:
        policy: anything with ``tokenizer`` and ``generate(contexts, sampling, max_new_tokens=...)``.
        envs: an env id (``num_envs`` instances are made with ``hero_gym.make(id, **env_kwargs)`` and
            closed at the end), one env instance, or a list of env instances / ids (one slot each; they
            should be copies of the same env). Instances you pass are not closed.
        n_episodes: number of tasks when ``tasks`` is not given: task ``i`` is ``reset(seed=seed + i)``.
        tasks: explicit tasks (:class:`Task` or dicts with ``seed``/``options``/``task_id``).
        group_size: every task is rolled out this many times (same seed and options, same ``task_id``),
            e.g. for GRPO groups; the number of episodes is ``len(tasks) * group_size``.
        sampling: passed to ``policy.generate`` (a ``SamplingConfig``; default the policy's default). When it
            has a ``seed``, step ``k`` of this call samples with the derived seed ``seed * 1000003 + k`` so
            the whole collection is reproducible without repeating random draws.
        budget: a :class:`TurnBudget` (or an int turned into one) spent one unit per env step; no new
            episode starts once it is exhausted and running ones are closed.
        turn_budget: alias of ``budget``.
        max_context_tokens: cap on context + reply length; each reply may use at most the room left, and an
            episode whose next context would not fit ends with ``stop_reason="context_overflow"``.
        num_envs: parallel env instances when ``envs`` is an id.
        system_prompt: overrides the env's ``info["system_prompt"]``.
        tool_prompt: ``f(tools, parser) -> str`` describing the tools and call format, appended to the
            system message when the chat template does not take ``tools`` itself (or when the env's parser is
            not hermes). ``None`` disables it.
        progress: show a tqdm bar over finished episodes.
    """
    if tasks is None:
        if n_episodes is None:
            raise ValueError("collect: give n_episodes or tasks")
        task_list = [Task(seed=seed + i) for i in range(int(n_episodes))]
    else:
        task_list = [t if isinstance(t, Task) else Task(**t) for t in tasks]
    if group_size < 1:
        raise ValueError("group_size must be >= 1")
    queue: list[tuple[int, Task, int]] = []
    for ti, t in enumerate(task_list):
        for g in range(group_size):
            queue.append((len(queue), t, g))
    if turn_budget is not None:
        if budget is not None:
            raise ValueError("collect: give budget or turn_budget, not both")
        budget = turn_budget
    if budget is None:
        budget = TurnBudget()
    elif isinstance(budget, int):
        budget = TurnBudget(total=budget)

    owned: list[Any] = []
    if isinstance(envs, str):
        import hero_gym

        n = max(1, min(num_envs, len(queue)))
        slots = []
        for _ in range(n):
            e = hero_gym.make(envs, **(env_kwargs or {}))
            owned.append(e)
            slots.append(_Slot(env=e, env_id=envs))
    elif isinstance(envs, Sequence):
        slots = []
        for e in envs:
            if isinstance(e, str):
                import hero_gym

                inst = hero_gym.make(e, **(env_kwargs or {}))
                owned.append(inst)
                slots.append(_Slot(env=inst, env_id=e))
            else:
                slots.append(_Slot(env=e, env_id=_env_id(e)))
    else:
        slots = [_Slot(env=envs, env_id=_env_id(envs))]
    if not slots:
        raise ValueError("collect: no envs")

    tokenizer = policy.tokenizer
    renderers: dict[str, ChatRenderer] = {}
    results: dict[int, Episode] = {}
    sampling_meta = asdict(sampling) if sampling is not None and hasattr(sampling, "__dataclass_fields__") else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(queue), desc="rollouts", unit="ep")

    def renderer_for(tools: list[dict[str, Any]]) -> ChatRenderer:
        key = json.dumps(tools, sort_keys=True)
        if key not in renderers:
            renderers[key] = ChatRenderer(tokenizer, tools or None)
        return renderers[key]

    def finish(slot: _Slot, reason: str, **meta: Any) -> None:
        ep = slot.episode
        assert ep is not None
        ep.metadata.update(meta)
        ep.metadata["stop_reason"] = reason
        ep.metadata["cut_short"] = reason not in ("terminated", "truncated")
        ep.metadata["context_tokens"] = len(slot.context)
        results[slot.order] = ep
        slot.episode = None
        slot.messages, slot.context = [], []
        if bar is not None:
            bar.update(1)

    def start(slot: _Slot) -> bool:
        """Start the next queued task in ``slot``; False when nothing (or no budget) is left."""
        while queue and not budget.exhausted:
            order, task, g = queue.pop(0)
            env = slot.env
            ep = Episode(env_id=slot.env_id, seed=task.seed, options=dict(task.options), task_id=task.task_id,
                         initial_observation="", metadata={"group_index": g})
            if sampling_meta is not None:
                ep.metadata["sampling"] = sampling_meta
            slot.episode, slot.order = ep, order
            try:
                obs, info = env.reset(seed=task.seed, options=dict(task.options) or None)
            except Exception as e:  # the env failed to start: keep a record, move on
                finish(slot, "env_error", env_error=f"reset: {type(e).__name__}: {e}\n{traceback.format_exc()}")
                continue
            tools = list(info.get("tools") or [])
            parser = getattr(getattr(env, "unwrapped", env), "parser", "hermes")
            sys_prompt = system_prompt if system_prompt is not None else info.get("system_prompt")
            renderer = renderer_for(tools if parser in ("hermes", "auto") else [])
            sys_msg = sys_prompt or ""
            if tools and tool_prompt is not None and not (renderer.supports_tools and renderer.tools):
                sys_msg = (sys_msg + "\n\n" if sys_msg else "") + tool_prompt(tools, parser)
            ep.initial_observation = str(obs)
            ep.system_prompt = sys_prompt
            ep.tools = tools
            ep.metadata["system_message"] = sys_msg or None
            if ep.task_id is None:
                ep.task_id = str(info.get("task_id") or
                                 f"{slot.env_id}:seed={task.seed}:{json.dumps(task.options, sort_keys=True)}")
            msgs = ([{"role": "system", "content": sys_msg}] if sys_msg else []) + [
                {"role": "user", "content": str(obs)}]
            slot.renderer, slot.messages = renderer, msgs
            slot.context = renderer.prompt_ids(msgs)
            if max_context_tokens is not None and len(slot.context) >= max_context_tokens:
                finish(slot, "context_overflow")
                continue
            return True
        return False

    n_steps = 0
    try:
        for s in slots:
            start(s)
        while True:
            active = [s for s in slots if s.episode is not None]
            if not active:
                break
            room = budget.remaining
            if room < len(active):  # budget runs out: close the episodes that cannot be stepped
                for s in active[room:]:
                    finish(s, "budget")
                active = active[:room]
                if not active:
                    break
            caps = None
            if max_context_tokens is not None:
                caps = [max_context_tokens - len(s.context) for s in active]
            step_sampling = sampling
            if getattr(sampling, "seed", None) is not None and hasattr(sampling, "__dataclass_fields__"):
                # a fresh, reproducible stream per step (re-using one seed would repeat the same draws)
                step_sampling = replace(sampling, seed=(sampling.seed * 1_000_003 + n_steps) % (2**63))
            n_steps += 1
            t0 = time.perf_counter()
            gens = policy.generate([s.context for s in active], step_sampling, max_new_tokens=caps)
            gen_time = (time.perf_counter() - t0) / len(active)
            for s, g in zip(active, gens):
                ep = s.episode
                assert ep is not None and s.renderer is not None
                action_ids = [int(i) for i in g.token_ids]
                t1 = time.perf_counter()
                budget.spend(1)
                try:
                    obs, reward, terminated, truncated, info = s.env.step(g.text)
                except Exception as e:
                    err = f"{type(e).__name__}: {e}"
                    ep.turns.append(Turn(
                        index=len(ep.turns), action_text=g.text, parsed_action=None,
                        action_error={"kind": "env_error", "message": err},
                        observation=f"Error: the environment failed ({err}).", observation_role="tool",
                        reward=0.0, terminated=False, truncated=True,
                        info={"generation_finish_reason": g.finish_reason},
                        context_token_ids=list(s.context), action_token_ids=action_ids,
                        action_logprobs=[float(x) for x in g.logprobs],
                        timings={"generate_s": gen_time, "env_s": time.perf_counter() - t1}))
                    finish(s, "env_error", env_error=err + "\n" + traceback.format_exc())
                    if not start(s):
                        pass
                    continue
                env_time = time.perf_counter() - t1
                role = info.get("observation_role", "tool")
                turn_info = _jsonable(info)
                turn_info["generation_finish_reason"] = g.finish_reason
                ep.turns.append(Turn(
                    index=len(ep.turns), action_text=g.text, parsed_action=info.get("parsed_action"),
                    action_error=info.get("action_error"), observation=str(obs),
                    observation_role=role if role in ("tool", "user") else "tool",
                    reward=float(reward), terminated=bool(terminated), truncated=bool(truncated), info=turn_info,
                    context_token_ids=list(s.context), action_token_ids=action_ids,
                    action_logprobs=[float(x) for x in g.logprobs],
                    timings={"generate_s": gen_time, "env_s": env_time}))
                ep.total_reward += float(reward)
                if terminated or truncated:
                    ep.success = bool(info["success"]) if "success" in info else bool(terminated and reward > 0)
                    if "reward_info" in info:
                        ep.metadata["reward_info"] = _jsonable({"r": info["reward_info"]})["r"]
                    finish(s, "terminated" if terminated else "truncated")
                    start(s)
                    continue
                prev = s.messages + [{"role": "assistant", "content": g.text}]
                new = [{"role": s.renderer.tool_role if role == "tool" else "user", "content": str(obs)}]
                nxt = s.context + action_ids + s.renderer.continuation_ids(prev, new, sampled_ids=action_ids)
                s.messages = prev + new
                if max_context_tokens is not None and len(nxt) >= max_context_tokens:
                    s.context = nxt
                    finish(s, "context_overflow")
                    start(s)
                    continue
                s.context = nxt
    finally:
        if bar is not None:
            bar.close()
        for e in owned:
            try:
                e.close()
            except Exception:
                pass
    # episodes never started (budget exhausted) are simply absent
    return [results[k] for k in sorted(results)]
