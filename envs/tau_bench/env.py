"""Tau-bench retail and airline as hero-gym multi-turn environments.

``hero_gym/TauRetail-v0`` and ``hero_gym/TauAirline-v0``. The system prompt is the domain policy,
``info["tools"]`` carries the tool schemas. An action is a tool call or a plain message to the
user; a message goes to the user simulator and its reply is the next observation (role "user").
The episode ends when the user says ``###STOP###``, on ``transfer_to_human_agents``, or at the turn
budget (truncated). The v1 reward is given at the end with a breakdown in ``info["reward_info"]``.

Constructor options (all keyword):
    data: ``"auto"`` (official when a data folder is given, else generated), ``"official"`` or
        ``"generated"``. A given folder without the data is an error.
    data_dir: official data directory (default ``$HERO_GYM_TAUBENCH_DIR``).
    split: default split (official retail: train/test/dev, airline: test; generated: train/test).
    task_index: default task (else sampled from ``np_random`` on every reset).
    user: ``"scripted"`` (default), ``"llm"`` (with ``user_chat_fn``), or a simulator instance.
    user_chat_fn: ``messages -> str`` for the LLM user.
    max_turns: turn budget (default 30). parser / render_mode: see :class:`MultiTurnEnv`.
    outputs_mode: ``"v1"`` (substring, default) or ``"strict"`` (whole tokens).
    reward_on_truncation: v1 gives 0 when the budget runs out (default False); True grades anyway.
    gen_seed / gen_users / gen_tasks: parameters of the generated data.

``reset(seed, options={"task_index": i, "split": s})`` overrides the defaults for one episode.
``info`` at reset carries ``data`` (source, path, fingerprint of the data: see
:meth:`~hero_gym.envs.tau_bench.data.Dataset.describe`); the step that ends the episode carries
``reward_info`` (the v1 reward breakdown), ``end_reason`` and ``success`` (reward == 1).
"""

from __future__ import annotations

from typing import Any

from hero_gym.core import MultiTurnEnv, StepResult, TextMessage, check_index
from hero_gym.tools import ToolCall, ToolSpec

from .common import TRANSFER_TOOL, Tool, call_error, is_error_observation, run_tool
from .data import Dataset, load_official, resolve_data_dir
from .reward import OUTPUT_MODES, compute_reward, output_found
from .tools_airline import AIRLINE_TOOL_MAP, AIRLINE_TOOLS
from .tools_retail import RETAIL_TOOL_MAP, RETAIL_TOOLS
from .users import STOP, UserContext, make_user

_TOOLS = {"retail": (RETAIL_TOOLS, RETAIL_TOOL_MAP), "airline": (AIRLINE_TOOLS, AIRLINE_TOOL_MAP)}
_SPEC_CACHE: dict[tuple[str, int], list[ToolSpec]] = {}


def load_dataset(domain: str, data: str = "auto", data_dir: str | None = None, gen_seed: int = 0,
                 gen_users: int | None = None, gen_tasks: int | None = None) -> Dataset:
    """The dataset an env uses (shared, cached per process).

    ``"auto"`` uses the official data when a folder is given (``data_dir`` or ``$HERO_GYM_TAUBENCH_DIR``)
    and generated data when none is; a folder that was given but does not hold the data is an
    error (``FileNotFoundError`` naming the path), never a silent fallback.
    """
    if data not in ("auto", "official", "generated"):
        raise ValueError(f"data must be 'auto', 'official' or 'generated', got {data!r}")
    if data == "official" or (data == "auto" and resolve_data_dir(data_dir) is not None):
        return load_official(domain, data_dir)
    from .generator import generate_dataset
    return generate_dataset(domain, seed=gen_seed, n_users=gen_users, n_tasks=gen_tasks)


class TauBenchEnv(MultiTurnEnv):
    """The Tau-bench env of ``domain`` (see the module docstring for the options)."""

    domain: str = "retail"
    default_max_turns = 30
    reset_options = frozenset({"task_index", "split"})
    # v1 fidelity: calls reach the tools unchecked (bad arguments give the tool's Python error,
    # unknown tools "Unknown action <name>"), and an empty message is a turn to the user.
    validate_calls = False
    allow_empty_messages = True

    def __init__(self, *, data: str = "auto", data_dir: str | None = None, split: str | None = None,
                 task_index: int | None = None, user: Any = "scripted", user_chat_fn: Any = None,
                 max_turns: int | None = None, parser: str | None = None, render_mode: str | None = None,
                 outputs_mode: str = "v1", reward_on_truncation: bool = False, gen_seed: int = 0,
                 gen_users: int | None = None, gen_tasks: int | None = None):
        super().__init__(max_turns=max_turns, parser=parser, render_mode=render_mode)
        if outputs_mode not in OUTPUT_MODES:
            raise ValueError(f"outputs_mode must be one of {OUTPUT_MODES}, got {outputs_mode!r}")
        self.dataset = load_dataset(self.domain, data, data_dir, gen_seed, gen_users, gen_tasks)
        self.tool_list, self.tool_map = _TOOLS[self.domain]
        self.default_split = self.check_split(
            split or ("test" if "test" in self.dataset.tasks else next(iter(self.dataset.tasks))))
        if task_index is not None:
            check_index(task_index, self.num_tasks(), "task_index", f" in split {self.default_split!r}")
        self.default_task_index = task_index
        self.user = make_user(user, user_chat_fn)
        self.outputs_mode = outputs_mode
        self.reward_on_truncation = reward_on_truncation
        self.db = self.dataset.new_db()
        self._specs = self._tool_specs()
        self.task = None
        self.agent_messages: list[str] = []
        self.executed_calls: list[dict[str, Any]] = []
        #: the episode's well-formed actions in order, each with its observation (the user's reply
        #: or the tool output); malformed replies never reach it. Experts read the state from it.
        self.history: list[tuple[ToolCall | TextMessage, str]] = []
        self.reward_info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ helpers
    def _tool_specs(self) -> list[ToolSpec]:
        key = (self.dataset.ident, id(self.dataset))
        if key not in _SPEC_CACHE:
            schemas = self.dataset.tool_schemas or [t.schema for t in self.tool_list]
            _SPEC_CACHE[key] = [ToolSpec.from_openai(s) for s in schemas if s["function"]["name"] in self.tool_map]
        return _SPEC_CACHE[key]

    def splits(self) -> list[str]:
        return list(self.dataset.tasks)

    def num_tasks(self, split: str | None = None) -> int:
        """Tasks in ``split`` (default: the env's split)."""
        return len(self.tasks(split))

    def tasks(self, split: str | None = None) -> list:
        """The tasks of ``split`` (default: the env's split)."""
        return self.dataset.tasks[self.check_split(split or self.default_split)]

    def tools(self) -> list[ToolSpec]:
        return self._specs

    def system_prompt(self) -> str | None:
        return self.dataset.policy

    has_oracle = True

    def oracle_action(self) -> str | None:
        """The gold expert's next action here (:class:`~hero_gym.envs.tau_bench.gold_expert.GoldExpert`:
        it reads the state, so it takes over from any state); ``None`` before a reset or after the end."""
        if self.task is None or self._done:
            return None
        expert = getattr(self, "_oracle_expert", None)
        if expert is None:
            from .gold_expert import GoldExpert

            expert = self._oracle_expert = GoldExpert(self)
        return expert.action()

    # ------------------------------------------------------------------ API hooks
    def _reset(self, *, seed: int | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        split = self.check_split(options.get("split", self.default_split))
        # v1 sampled with randint(0, len) (inclusive), which could run past the end; never here.
        idx = self.select_task(options, split=split, default=self.default_task_index)
        self.task = self.dataset.tasks[split][idx]
        self.db.reset()                      # copy-on-write: drop the overlays, O(#tables)
        self.agent_messages = []
        self.executed_calls = []
        self.history = []
        self.reward_info = None
        ctx = UserContext(domain=self.domain, user_record=self.db.users.get(self.task.user_id),
                          goal_reached=self._goal_reached, executed_calls=self.executed_calls)
        user_seed = None if seed is None else int(seed)
        first = self.user.reset(self.task, ctx, seed=user_seed)
        info = {"task_id": self.task.task_id, "task_index": idx, "split": split,
                "data_source": self.dataset.source, "data": self.dataset.describe(), "domain": self.domain}
        return first, info

    def _goal_reached(self) -> bool:
        """Whether the database equals the gold one and all outputs were said (for the scripted user)."""
        info = compute_reward(self.dataset, self.tool_map, self.task, self.db, self.agent_messages,
                              self.outputs_mode)
        return info.reward == 1.0

    def _finish(self, truncated: bool = False) -> tuple[float, dict[str, Any]]:
        info = compute_reward(self.dataset, self.tool_map, self.task, self.db, self.agent_messages,
                              self.outputs_mode).to_dict()
        if truncated and not self.reward_on_truncation:
            info["reward_if_graded"] = info["reward"]
            info["reward"] = 0.0          # v1: an episode that hits the step limit earns 0
        info["truncated"] = truncated
        self.reward_info = info
        return float(info["reward"]), info

    def _end(self, res: StepResult, end_reason: str, truncated: bool = False) -> StepResult:
        """Grade the episode into ``res`` (reward, ``reward_info``, ``end_reason``, success)."""
        res.reward, rinfo = self._finish(truncated)
        res.info = {**res.info, "reward_info": rinfo, "end_reason": end_reason}
        res.success = res.reward >= 1.0 - 1e-6     # v1 counts a trial as solved when reward == 1
        return res

    def _step(self, action: ToolCall | TextMessage) -> StepResult:
        base = {"task_id": self.task.task_id}
        if isinstance(action, TextMessage):
            self.agent_messages.append(action.content)
            reply = self.user.reply(action.content)
            reply = "" if reply is None else str(reply)
            self.history.append((action, reply))
            res = StepResult(reply, 0.0, STOP in reply, base, role="user")
            return self._end(res, "user_stop") if res.terminated else res
        tool: Tool | None = self.tool_map.get(action.name)
        obs = run_tool(self.tool_map, self.db, action.name, dict(action.arguments), self.domain)
        if (malformed := call_error(self.tool_map, action.name, action.arguments)) is not None:
            base["action_error"] = malformed
        self.executed_calls.append({"name": action.name, "arguments": dict(action.arguments),
                                    "ok": not is_error_observation(obs)})
        self.history.append((action, obs))
        if tool is not None and tool.name == TRANSFER_TOOL:
            return self._end(StepResult(obs, 0.0, True, base, role="tool"), "transfer")
        return StepResult(obs, 0.0, False, base, role="tool")

    def _on_truncation(self, result: StepResult) -> StepResult:
        return self._end(result, "max_turns", truncated=True)

    # ------------------------------------------------------------------ extras
    def outputs_said(self) -> dict[str, bool]:
        return {o: output_found(o, self.agent_messages, self.outputs_mode) for o in self.task.outputs}


class TauRetailEnv(TauBenchEnv):
    """Tau-bench retail (16 tools)."""

    domain = "retail"


class TauAirlineEnv(TauBenchEnv):
    """Tau-bench airline (14 tools)."""

    domain = "airline"
