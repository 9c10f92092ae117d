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

Since every context extends the previous one, each env slot keeps the policy's KV cache of its episode
(``kv_cache=True``, when the policy has ``new_kv_cache()``): a turn encodes only the tokens after the cached
prefix (the reply's last token, the rendered observation and the generation prompt), so the prefill cost of an
episode grows linearly in its turns instead of quadratically.

Each env runs in a slot (``_Slot``): ``start`` resets the env and renders the first context, ``step`` applies
one reply and extends the context, ``finish`` closes the episode and frees the slot for the next task.

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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from hero_gym.chat import ChatRenderer
from hero_gym.records import Episode, Turn

__all__ = ["TOOL_PROMPTS", "Task", "TurnBudget", "collect", "compact_tool_prompt", "context_cap", "default_tool_prompt",
           "policy_context_window"]


class Policy(Protocol):
    """What :func:`collect` needs from a policy (HFPolicy and VLLMPolicy both qualify). A policy that also
    has ``new_kv_cache()`` gets ``kv_caches=[one per row]`` in ``generate`` (see ``collect(kv_cache=...)``)."""

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


# ---------------------------------------------------------------------- one env slot


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
class _Prompting:
    """How every slot of one :func:`collect` call turns an env's first observation into a chat context
    (shared so that the renderers, one per tool set, are built once)."""

    tokenizer: Any
    system_prompt: str | None
    tool_prompt: Callable[[Sequence[dict[str, Any]], str], str] | None
    max_context_tokens: int | None
    sampling_meta: dict[str, Any] | None
    renderers: dict[str, ChatRenderer] = field(default_factory=dict)

    def renderer(self, tools: list[dict[str, Any]]) -> ChatRenderer:
        key = json.dumps(tools, sort_keys=True)
        if key not in self.renderers:
            self.renderers[key] = ChatRenderer(self.tokenizer, tools or None)
        return self.renderers[key]

    def fits(self, context: Sequence[int]) -> bool:
        return self.max_context_tokens is None or len(context) < self.max_context_tokens


@dataclass
class _Slot:
    """One env and the episode running in it: :meth:`start` resets the env for a task and builds the first
    context, :meth:`step` applies one generated reply, :meth:`finish` closes the episode. ``start`` and
    ``step`` return the finished :class:`Episode` when the episode ended, ``None`` while it runs."""

    env: Any
    env_id: str
    prompting: _Prompting
    episode: Episode | None = None
    order: int = -1
    renderer: ChatRenderer | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    context: list[int] = field(default_factory=list)
    kv: Any | None = None  # the policy's KV cache of this episode (see ``collect(kv_cache=...)``)
    kv_off: bool = False   # the cache was dropped for the rest of this episode (``max_cached_tokens``)

    @property
    def kv_tokens(self) -> int:
        """Tokens held in this slot's KV cache."""
        return len(self.kv.ids) if self.kv is not None and not self.kv_off else 0

    @property
    def running(self) -> bool:
        return self.episode is not None

    def start(self, order: int, task: Task, group_index: int) -> Episode | None:
        """Reset the env for ``task`` and render the first context (system message + first observation)."""
        p = self.prompting
        ep = Episode(env_id=self.env_id, seed=task.seed, options=dict(task.options), task_id=task.task_id,
                     initial_observation="", metadata={"group_index": group_index})
        if p.sampling_meta is not None:
            ep.metadata["sampling"] = p.sampling_meta
        self.episode, self.order = ep, order
        try:
            obs, info = self.env.reset(seed=task.seed, options=dict(task.options) or None)
        except Exception as e:  # the env failed to start: keep a record, move on
            return self.finish("env_error", env_error=f"reset: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        tools = list(info.get("tools") or [])
        parser = getattr(getattr(self.env, "unwrapped", self.env), "parser", "hermes")
        sys_prompt = p.system_prompt if p.system_prompt is not None else info.get("system_prompt")
        renderer = p.renderer(tools if parser in ("hermes", "auto") else [])
        sys_msg = sys_prompt or ""
        if tools and p.tool_prompt is not None and not (renderer.supports_tools and renderer.tools):
            sys_msg = (sys_msg + "\n\n" if sys_msg else "") + p.tool_prompt(tools, parser)
        ep.initial_observation = str(obs)
        ep.system_prompt = sys_prompt
        ep.tools = tools
        ep.metadata["system_message"] = sys_msg or None
        if ep.task_id is None:
            ep.task_id = str(info.get("task_id") or
                             f"{self.env_id}:seed={task.seed}:{json.dumps(task.options, sort_keys=True)}")
        self.renderer = renderer
        self.messages = ([{"role": "system", "content": sys_msg}] if sys_msg else []) + [
            {"role": "user", "content": str(obs)}]
        self.context = renderer.prompt_ids(self.messages)
        return None if p.fits(self.context) else self.finish("context_overflow")

    def step(self, g: Any, generate_s: float) -> Episode | None:
        """Send reply ``g`` (a :class:`~hero_gym.agents.policy.Generation`) to the env, record the turn and
        extend the context with the sampled ids and the rendered observation."""
        ep = self.episode
        assert ep is not None and self.renderer is not None
        action_ids = [int(i) for i in g.token_ids]
        record = {"action_text": g.text, "context_token_ids": list(self.context), "action_token_ids": action_ids,
                  "action_logprobs": [float(x) for x in g.logprobs]}
        t0 = time.perf_counter()
        try:
            obs, reward, terminated, truncated, info = self.env.step(g.text)
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            ep.turns.append(Turn(
                index=len(ep.turns), parsed_action=None, action_error={"kind": "env_error", "message": err},
                observation=f"Error: the environment failed ({err}).", observation_role="tool",
                reward=0.0, terminated=False, truncated=True, info={"generation_finish_reason": g.finish_reason},
                timings={"generate_s": generate_s, "env_s": time.perf_counter() - t0}, **record))
            return self.finish("env_error", env_error=err + "\n" + traceback.format_exc())
        env_s = time.perf_counter() - t0
        role = info.get("observation_role", "tool")
        turn_info = _jsonable(info)
        turn_info["generation_finish_reason"] = g.finish_reason
        ep.turns.append(Turn(
            index=len(ep.turns), parsed_action=info.get("parsed_action"), action_error=info.get("action_error"),
            observation=str(obs), observation_role=role if role in ("tool", "user") else "tool",
            reward=float(reward), terminated=bool(terminated), truncated=bool(truncated), info=turn_info,
            timings={"generate_s": generate_s, "env_s": env_s}, **record))
        ep.total_reward += float(reward)
        if terminated or truncated:
            ep.success = bool(info["success"]) if "success" in info else bool(terminated and reward > 0)
            if "reward_info" in info:
                ep.metadata["reward_info"] = _jsonable({"r": info["reward_info"]})["r"]
            return self.finish("terminated" if terminated else "truncated")
        prev = self.messages + [{"role": "assistant", "content": g.text}]
        new = [{"role": self.renderer.tool_role if role == "tool" else "user", "content": str(obs)}]
        self.context = self.context + action_ids + self.renderer.continuation_ids(prev, new, sampled_ids=action_ids)
        self.messages = prev + new
        return None if self.prompting.fits(self.context) else self.finish("context_overflow")

    def finish(self, reason: str, **meta: Any) -> Episode:
        """Close the running episode (``stop_reason`` = ``reason``) and free the slot."""
        ep = self.episode
        assert ep is not None
        ep.metadata.update(meta)
        ep.metadata["stop_reason"] = reason
        ep.metadata["cut_short"] = reason not in ("terminated", "truncated")
        ep.metadata["context_tokens"] = len(self.context)
        self.episode, self.renderer, self.messages, self.context = None, None, [], []
        if self.kv is not None:
            self.kv.clear()
        self.kv_off = False
        return ep


# ---------------------------------------------------------------------- collect


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
    kv_cache: bool = True,
    max_cached_tokens: int | None = None,
) -> list[Episode]:
    """Roll out episodes with ``policy`` and return them (task order; groups are consecutive).

    Args:
        policy: anything with ``tokenizer`` and ``generate(contexts, sampling, max_new_tokens=...)``.
        envs: an env id (``num_envs`` instances are made with ``hero_gym.make(id, **env_kwargs)`` and
            closed at the end), one env instance, or a list of env instances / ids (one slot each; they
            should be copies of the same env), or a :class:`hero_gym.pool.EnvPool` (one slot per pooled
            env; the envs of a step run in parallel). Instances and pools you pass are not closed.
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
            episode whose next context would not fit ends with ``stop_reason="context_overflow"``. A policy
            with a ``max_context_tokens`` attribute (:class:`~hero_gym.agents.vllm_policy.VLLMPolicy`: the
            engine's ``max_model_len``) lowers the cap to it, so no context past the engine's window is sent.
        num_envs: parallel env instances when ``envs`` is an id.
        system_prompt: overrides the env's ``info["system_prompt"]``.
        tool_prompt: ``f(tools, parser) -> str`` describing the tools and call format, appended to the
            system message when the chat template does not take ``tools`` itself (or when the env's parser is
            not hermes). ``None`` disables it.
        progress: show a tqdm bar over finished episodes.
        kv_cache: keep each slot's keys/values between turns so a turn encodes only its new tokens (the
            sampled reply's last token, the rendered observation and the generation prompt) instead of the
            whole context. Used when the policy offers it (:class:`~hero_gym.agents.policy.HFPolicy` does:
            ``generate(..., kv_caches=...)``); the sampled ids are the same either way up to float rounding.
        max_cached_tokens: at most this many tokens held in the slots' KV caches together (memory: every
            slot's cache lives between turns). When a step leaves more, the largest caches are dropped and
            their episodes run uncached (whole context re-encoded each turn) until they end. ``None``: the
            policy's ``max_cached_tokens`` attribute (HFPolicy sizes it from free GPU memory on CUDA; none on
            CPU), else no cap.
    """
    queue = deque(_queue(n_episodes, tasks, group_size, seed))
    budget = _as_budget(budget, turn_budget)
    max_context_tokens = context_cap(policy, max_context_tokens)
    if max_cached_tokens is None:
        max_cached_tokens = getattr(policy, "max_cached_tokens", None)
    prompting = _Prompting(policy.tokenizer, system_prompt, tool_prompt, max_context_tokens,
                           asdict(sampling) if hasattr(sampling, "__dataclass_fields__") else None)
    slots, owned = _make_slots(envs, num_envs, len(queue), env_kwargs or {}, prompting)
    cached = kv_cache and hasattr(policy, "new_kv_cache")
    for s in slots:
        s.kv = policy.new_kv_cache() if cached else None
    results: dict[int, Episode] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(queue), desc="rollouts", unit="ep")

    def done(ep: Episode, order: int) -> None:
        results[order] = ep
        if bar is not None:
            bar.update(1)

    def refill(slot: _Slot) -> None:
        """Start queued tasks in ``slot`` until one is running (or nothing, or no budget, is left)."""
        while queue and not budget.exhausted:
            order, task, group_index = queue.popleft()
            ended = slot.start(order, task, group_index)
            if ended is None:
                return
            done(ended, order)

    try:
        for s in slots:
            refill(s)
        n_steps = 0
        while active := [s for s in slots if s.running]:
            if budget.remaining < len(active):  # budget runs out: close the episodes that cannot be stepped
                for s in active[budget.remaining:]:
                    done(s.finish("budget"), s.order)
                active = active[:budget.remaining]
                if not active:
                    break
            caps = None if max_context_tokens is None else [max_context_tokens - len(s.context) for s in active]
            t0 = time.perf_counter()
            kw = {"kv_caches": [None if s.kv_off else s.kv for s in active]} if cached else {}
            gens = policy.generate([s.context for s in active], _step_sampling(sampling, n_steps),
                                   max_new_tokens=caps, **kw)
            if cached and max_cached_tokens is not None:
                _cap_caches(active, int(max_cached_tokens))
            generate_s = (time.perf_counter() - t0) / len(active)
            n_steps += 1
            for s, g in zip(active, gens):  # pooled envs (hero_gym.pool) start stepping side by side
                if hasattr(s.env, "submit_step"):
                    s.env.submit_step(g.text)
            for s, g in zip(active, gens):
                budget.spend(1)
                ended = s.step(g, generate_s)
                if ended is not None:
                    done(ended, s.order)
                    refill(s)
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


def context_cap(policy: Any, max_context_tokens: int | None = None) -> int | None:
    """The context cap of a rollout with ``policy``: the smaller of ``max_context_tokens`` and the policy's own
    ``max_context_tokens`` attribute (a vLLM engine's ``max_model_len``); ``None`` when neither is set."""
    own = getattr(policy, "max_context_tokens", None)
    caps = [int(c) for c in (max_context_tokens, own) if c is not None]
    return min(caps) if caps else None


def policy_context_window(policy: Any) -> int | None:
    """The longest context ``policy`` can take: its ``max_context_tokens`` (vLLM) or its model's
    ``config.max_position_embeddings`` (transformers); ``None`` when unknown."""
    cfg = getattr(getattr(policy, "model", None), "config", None)
    return context_cap(policy, getattr(cfg, "max_position_embeddings", None))


def _cap_caches(active: Sequence[_Slot], limit: int) -> None:
    """Drop the largest KV caches of ``active`` (uncached for the rest of their episodes) until at most
    ``limit`` tokens are held."""
    total = sum(s.kv_tokens for s in active)
    for s in sorted(active, key=lambda s: -s.kv_tokens):
        if total <= limit:
            break
        total -= s.kv_tokens
        s.kv.clear()
        s.kv_off = True


def _queue(n_episodes: int | None, tasks: Sequence[Task | dict[str, Any]] | None, group_size: int,
           seed: int) -> list[tuple[int, Task, int]]:
    """``(order, task, group_index)`` for every episode to run, in task order (groups consecutive)."""
    if tasks is None:
        if n_episodes is None:
            raise ValueError("collect: give n_episodes or tasks")
        task_list = [Task(seed=seed + i) for i in range(int(n_episodes))]
    else:
        task_list = [t if isinstance(t, Task) else Task(**t) for t in tasks]
    if group_size < 1:
        raise ValueError("group_size must be >= 1")
    return [(i * group_size + g, t, g) for i, t in enumerate(task_list) for g in range(group_size)]


def _as_budget(budget: TurnBudget | int | None, turn_budget: TurnBudget | int | None) -> TurnBudget:
    if turn_budget is not None:
        if budget is not None:
            raise ValueError("collect: give budget or turn_budget, not both")
        budget = turn_budget
    if budget is None:
        return TurnBudget()
    return TurnBudget(total=budget) if isinstance(budget, int) else budget


def _make_slots(envs: str | Any | Sequence[Any], num_envs: int, n_episodes: int, env_kwargs: dict[str, Any],
                prompting: _Prompting) -> tuple[list[_Slot], list[Any]]:
    """One slot per env instance, and the instances made here (closed by :func:`collect`). An env id gives
    ``num_envs`` instances (no more than there are episodes)."""
    import hero_gym
    from hero_gym.pool import pool_envs

    envs = pool_envs(envs)  # an EnvPool: one slot per pooled env (the pool is not closed here)
    if isinstance(envs, str):
        envs = [envs] * max(1, min(num_envs, n_episodes))
    elif not isinstance(envs, Sequence):
        envs = [envs]
    if not envs:
        raise ValueError("collect: no envs")
    slots, owned = [], []
    for e in envs:
        if isinstance(e, str):
            inst = hero_gym.make(e, **env_kwargs)
            owned.append(inst)
            slots.append(_Slot(inst, e, prompting))
        else:
            slots.append(_Slot(e, _env_id(e), prompting))
    return slots, owned


def _step_sampling(sampling: Any, step: int) -> Any:
    """The sampling config of generate call ``step``: a fresh, reproducible seed per step when ``sampling``
    has a seed (re-using one seed would repeat the same draws)."""
    if getattr(sampling, "seed", None) is not None and hasattr(sampling, "__dataclass_fields__"):
        return replace(sampling, seed=(sampling.seed * 1_000_003 + step) % (2**63))
    return sampling
