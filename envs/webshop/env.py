"""``hero_gym/WebShop-v0``: the WebShop shopping task as a multi-turn text environment.

An episode: the agent gets an instruction ("i need a sulfate free shampoo ... price lower than 30.00
dollars"), searches the shop, opens products, chooses options and buys one. ``click[buy now]`` ends
the episode with the WebShop reward (see :mod:`hero_gym.envs.webshop.reward`); running out of turns
(default 15) ends it with reward 0. Actions use the ``bracket`` parser: ``search[query]`` and
``click[button]`` (button text, case-insensitive). A click on a button that is not on the page, or
an empty search, is an error observation with ``info["action_error"]``; the page does not change.

Observation modes: ``text`` (segments joined by ``" [SEP] "``), ``text_rich`` (buttons marked),
``html`` (the page the HTTP server would serve).

``info`` on every step, error steps included: ``available_actions`` ({"has_search_bar",
"clickables"}), ``page`` (page kind) and the core keys (``success`` is reward == 1 on the purchase
step); at reset also ``task`` (the goal), ``task_id``, ``task_index`` and ``data`` (the catalog:
source, folder, size, seed); when the episode ends with
a purchase also ``reward_info`` (the reward breakdown) and ``score`` (100 x reward).
"""

from __future__ import annotations

from typing import Any

from hero_gym.core import MultiTurnEnv, StepResult, TextMessage, check_index
from hero_gym.tools import ToolCall, ToolSpec

from .catalog import DEFAULT_NUM_PRODUCTS, Catalog, Goal, clean, get_catalog
from .pages import SEARCH_STATE, PageState, Shop, render_html, render_text, render_text_rich
from .reward import get_reward

__all__ = ["WebShopEnv", "WebShopBase", "SEARCH_TOOL", "click_tool", "SYSTEM_PROMPT"]

OBSERVATION_MODES = ("text", "text_rich", "html")

SYSTEM_PROMPT = (
    "You are shopping in an online store (WebShop) for a customer. Each observation is the current web "
    "page. Answer with exactly one action per reply: search[your query] when the page has a search bar, "
    "or click[button] with the text of a button on the page (for example click[b0abc12345] to open a "
    "product, click[large] to choose an option, click[< prev], click[next >], click[back to search], "
    "click[description]). Choose the options the instruction asks for, then click[buy now] to buy the "
    "product; buying ends the episode."
)

SEARCH_TOOL = ToolSpec(
    name="search",
    description="Type a query into the search bar and run the search (only on the search page).",
    parameters={"type": "object",
                "properties": {"query": {"type": "string", "description": "search keywords"}},
                "required": ["query"]},
)


def click_tool(clickables: list[str]) -> ToolSpec:
    shown = ", ".join(clickables)
    return ToolSpec(
        name="click",
        description=f"Click a button on the current page (its text, case-insensitive). Buttons here: {shown}.",
        parameters={"type": "object",
                    "properties": {"target": {"type": "string", "description": "the button text"}},
                    "required": ["target"]},
    )


def _head(instruction: str) -> list[tuple[str, str]]:
    """The header segments every page starts with (see :meth:`Shop.segments`)."""
    return [("WebShop", "text"), ("Instruction:", "text"), (instruction, "text")]


def _is_one(x: float) -> bool:
    return abs(x - 1.0) < 1e-9


class WebShopBase(MultiTurnEnv):
    """What the text and browser modes share: goals, tools, action checks, reward bookkeeping."""

    default_parser = "bracket"
    allow_text_messages = False
    default_max_turns = 15
    reset_options = frozenset({"task_index", "split", "goal_id"})

    def __init__(self, *, observation_mode: str = "text", num_products: int | None = None, catalog_seed: int = 0,
                 split: str = "train", data_dir: str | None = None, human_goals: bool = False,
                 catalog: Catalog | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if observation_mode not in OBSERVATION_MODES:
            raise ValueError(f"observation_mode must be one of {OBSERVATION_MODES}, not {observation_mode!r}")
        self.observation_mode = observation_mode
        built_here = catalog is None   # a catalog passed in does not say where it came from
        if catalog is None:
            if num_products is None and data_dir is None:
                num_products = DEFAULT_NUM_PRODUCTS
            catalog = get_catalog(num_products, catalog_seed, data_dir, human_goals)
        self.catalog = catalog   # shared and read-only
        self.data_info = {"source": catalog.source, "num_products": len(catalog.products),
                          "path": str(data_dir) if built_here and data_dir is not None else None,
                          "catalog_seed": catalog_seed if built_here else None,
                          "human_goals": human_goals if built_here else None}
        self.shop = Shop(catalog)
        self.split = self.check_split(split)
        self.goal: Goal | None = None
        self._available: dict[str, Any] = {"has_search_bar": True, "clickables": []}
        self._tools_cache: tuple[Any, list[ToolSpec]] | None = None

    # ------------------------------------------------------------------ goals
    def _pick_goal(self, options: dict[str, Any]) -> tuple[Goal, int]:
        """The episode's goal and its index in the split (-1 when picked by ``goal_id``)."""
        if options.get("goal_id") is not None:
            gid = check_index(options["goal_id"], len(self.catalog.goals), "goal_id", " (catalog-wide)")
            return self.catalog.goals[gid], -1
        split = self.check_split(options.get("split", self.split))
        index = self.select_task(options, split=split)
        return self.catalog.goals[self.catalog.split_goals(split)[index]], index

    def _extra_info(self) -> dict[str, Any]:
        return {**self._page_info(), "page": self._page_kind()}

    def _page_kind(self) -> str | None:
        raise NotImplementedError

    def num_tasks(self, split: str | None = None) -> int:
        return len(self.catalog.split_goals(split or self.split))

    def splits(self) -> list[str]:
        return list(self.catalog.splits)

    def system_prompt(self) -> str:
        return SYSTEM_PROMPT

    # ------------------------------------------------------------------ tools
    def tools(self) -> list[ToolSpec]:
        key = (self._available["has_search_bar"], tuple(self._available["clickables"]))
        if self._tools_cache is None or self._tools_cache[0] != key:
            tools = [SEARCH_TOOL] if key[0] else []
            if key[1]:
                tools.append(click_tool(list(key[1])))
            self._tools_cache = (key, tools)
        return self._tools_cache[1]

    def _check(self, action: ToolCall | TextMessage) -> tuple[str, str] | StepResult:
        """Normalise a call to ``("search", query)`` / ``("click", target)`` or return an error result."""
        if isinstance(action, TextMessage):   # not reachable with allow_text_messages=False
            return self._error("no_action", "Reply with search[query] or click[button].")
        if action.name == "search":
            query = clean(action.arguments.get("query", ""))
            if not query:
                return self._error("invalid_arguments", "The search query is empty: write search[some keywords].")
            return "search", query
        target = clean(action.arguments.get("target", "")).lower()
        if target not in self._available["clickables"]:
            shown = ", ".join(self._available["clickables"])
            return self._error("invalid_arguments",
                               f"There is no button '{target}' on this page. Buttons here: {shown}.")
        return "click", target

    def _error(self, kind: str, message: str) -> StepResult:
        return StepResult(observation=f"Error: {message}",
                          info={"action_error": {"kind": kind, "message": message}})

    def _page_info(self) -> dict[str, Any]:
        return {"available_actions": {"has_search_bar": self._available["has_search_bar"],
                                      "clickables": list(self._available["clickables"])}}

    def _task_info(self, goal: Goal, index: int) -> dict[str, Any]:
        return {"task": goal.to_dict(), "task_id": f"webshop-{goal.goal_id}", "task_index": index,
                "instruction": goal.instruction, "data": dict(self.data_info)}

    def _purchase_info(self, reward: float, breakdown: dict[str, Any]) -> dict[str, Any]:
        return {"reward_info": breakdown, "success": _is_one(reward), "score": 100.0 * reward}

    def _render_text_mode(self, segments: list[tuple[str, str]]) -> str | None:
        """The observation of the page ``segments`` in the text modes; ``None`` in ``html`` mode
        (the in-process env renders the page itself, the browser env reads it from the browser)."""
        if self.observation_mode == "text":
            return render_text(segments)
        if self.observation_mode == "text_rich":
            return render_text_rich(segments)
        return None


class WebShopEnv(WebShopBase):
    """WebShop in-process (no server): the page state machine of :mod:`~hero_gym.envs.webshop.pages`.

    Args:
        observation_mode: ``"text"`` (default), ``"text_rich"`` or ``"html"``.
        num_products: size of the generated catalog (default 1000); with ``data_dir`` it caps the
            number of official products (default: all).
        catalog_seed: seed of the generated catalog, goals, prices and splits.
        split: ``"train"``, ``"eval"`` or ``"test"`` (goals drawn from it on reset).
        data_dir: a folder with the official ``items_shuffle*.json`` / ``items_ins_v2*.json`` /
            ``items_human_ins.json``; ``human_goals`` uses the human instructions.
        max_turns: turn budget (default 15).
        max_results: small-model observation option (off by default): keep only the top
            ``max_results`` products of every search, e.g. 5 (one short results page; the search
            engine and its ranking are unchanged).
        instruction_once: small-model observation option (off by default): show the
            ``Instruction: [SEP] ...`` header only in the first observation of an episode, not on
            every page (text and text_rich modes; the goal does not change within an episode).
    Options of ``reset``: ``task_index`` (index within the split), ``split``, or ``goal_id`` (a
    catalog-wide goal id); without them the goal is drawn from the reset seed.
    """

    def __init__(self, *, max_results: int | None = None, instruction_once: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if max_results is not None:
            self.shop = Shop(self.catalog, max_results=max_results)
        self.instruction_once = bool(instruction_once)
        if self.instruction_once and self.observation_mode == "html":
            raise ValueError("instruction_once applies to the text and text_rich observation modes, not html")
        self.state: PageState = SEARCH_STATE

    def _page_kind(self) -> str | None:
        return self.state.kind

    has_oracle = True

    def oracle_action(self) -> str | None:
        """The goal-knowing expert's action here (:class:`~hero_gym.envs.webshop.expert.GoalExpert`)."""
        if self.goal is None or self._done:
            return None
        from .expert import GoalExpert

        return GoalExpert(self).action()

    def _set_state(self, state: PageState) -> None:
        self.state = state
        self._available = self.shop.available_actions(state)

    def _render(self, reward: float | None = None) -> str:
        assert self.goal is not None
        segs = self.shop.segments(self.state, self.goal.instruction, reward)
        if self.instruction_once and self._turn > 0 and segs[:3] == _head(self.goal.instruction):
            segs = segs[3:]   # the "WebShop [SEP] Instruction: [SEP] ..." header, shown at reset only
        text = self._render_text_mode(segs)
        return text if text is not None else render_html(self.state, segs, "local", self.shop, reward)

    def _reset(self, *, seed: int | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.goal, index = self._pick_goal(options)
        self._set_state(SEARCH_STATE)
        return self._render(), self._task_info(self.goal, index)

    def _step(self, action: ToolCall | TextMessage) -> StepResult:
        checked = self._check(action)
        if isinstance(checked, StepResult):
            return checked
        kind, arg = checked
        if kind == "search":
            self._set_state(PageState("results", arg, 1))
        else:
            self._set_state(self.shop.transitions(self.state)[arg])
        if self.state.kind == "done":
            reward, breakdown = get_reward(self.goal, self.catalog.product(self.state.asin), dict(self.state.options))
            self._available = {"has_search_bar": False, "clickables": []}
            return StepResult(self._render(reward), reward=reward, terminated=True,
                              info=self._purchase_info(reward, breakdown), success=_is_one(reward))
        return StepResult(self._render())
