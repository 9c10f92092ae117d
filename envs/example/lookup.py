"""``hero_gym/Lookup-v0``: look a code up in a small table, then answer with it.

The smallest env that still has the shape of the real ones: a user request, tools whose results
the agent must use, a terminal action, a reward, errors for bad calls, and unnecessary turns an
agent can waste (repeated lookups, chatting). It is the env the HERO unit tests learn on.

Episode: the user asks for the code of one item. ``lookup(key)`` returns that item's code (or an
error listing no keys: the agent must ask for the right one); ``answer(code)`` ends the episode
with reward 1 if the code is right, 0 otherwise. A plain message gets a reminder from the user.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hero_gym.core import MultiTurnEnv, StepResult, TextMessage
from hero_gym.tools import ToolCall, ToolSpec

ITEMS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "olive", "peach", "pear",
         "plum", "kiwi", "lime", "fig", "date", "guava"]

TOOLS = [
    ToolSpec(name="lookup", description="Look up the code of an item.",
             parameters={"type": "object", "properties": {"key": {"type": "string", "description": "item name"}},
                         "required": ["key"]}),
    ToolSpec(name="answer", description="Give the final code to the user. Ends the episode.",
             parameters={"type": "object", "properties": {"code": {"type": "string", "description": "the code"}},
                         "required": ["code"]}),
]

SYSTEM_PROMPT = (
    "You help users find item codes. Call lookup with the item name to get its code, then call "
    "answer with that code. Use one tool call per reply."
)


class LookupEnv(MultiTurnEnv):
    """Look up an item's code and answer it.

    Args:
        num_items: size of the table (<= 16).
        table_seed: seed of the item -> code table (fixed per env instance).
        split: ``None`` (default): one task per item of the table; ``"train"``: the first half of the
            items (rounded up); ``"test"``: the other half. The table is the same in every split, so a
            ``"test"`` env asks for items a ``"train"`` env never asks for (held-out tasks).
        max_turns: turn budget (default 6).
    Options of ``reset``: ``task_index`` picks the item (an index into the split's items); otherwise it is
    drawn from the seed.
    """

    default_max_turns = 6
    SPLITS = ("train", "test")

    def __init__(self, num_items: int = 8, table_seed: int = 0, split: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if not 1 <= num_items <= len(ITEMS):
            raise ValueError(f"num_items must be in 1..{len(ITEMS)}")
        if split not in (None, *self.SPLITS):
            raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
        if split is not None and num_items < 2:
            raise ValueError("a train/test split needs num_items >= 2")
        rng = np.random.default_rng(table_seed)
        self.table = {item: f"{int(rng.integers(100, 1000))}" for item in ITEMS[:num_items]}
        self.split = split
        self._item = ""

    def _task_items(self, split: str | None = None) -> list[str]:
        items = list(self.table)
        half = (len(items) + 1) // 2
        split = split or self.split
        return items if split is None else items[:half] if split == "train" else items[half:]

    def system_prompt(self) -> str:
        return SYSTEM_PROMPT

    def num_tasks(self, split: str | None = None) -> int:
        if split not in (None, *self.SPLITS):
            raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
        return len(self._task_items(split))

    def tools(self) -> list[ToolSpec]:
        return TOOLS

    def _reset(self, *, seed: int | None, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        index = self.select_task(options)
        self._item = self._task_items()[index]
        task_id = f"lookup-{index}" if self.split is None else f"lookup-{self.split}-{index}"
        return f"What is the code for {self._item}?", {"task_id": task_id, "task_index": index}

    def _step(self, action: ToolCall | TextMessage) -> StepResult:
        if isinstance(action, TextMessage):
            return StepResult(f"Please use the tools: look up the code for {self._item}, then answer it.",
                              role="user")
        if action.name == "lookup":
            key = str(action.arguments["key"]).strip().lower()
            if key not in self.table:
                return StepResult(f"Error: no item named {key!r}.", info={"lookup_hit": False})
            return StepResult(self.table[key], info={"lookup_hit": True})
        code = str(action.arguments["code"]).strip()
        correct = code == self.table[self._item]
        return StepResult("Correct." if correct else "Wrong code.", reward=float(correct), terminated=True,
                          info={"expected": self.table[self._item]}, success=correct)
