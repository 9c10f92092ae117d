"""v1 reward with a cached gold result and an overlay-only database comparison.

v1 (README of the data, and the published code's semantics): hash the final database; reload a
fresh database, replay the gold actions except ``transfer_to_human_agents`` and hash it; the
"actions" reward is 1 only if the hashes match. The hash is ``sha256(str(to_hashable(db)))``, so
dict key order does not matter but list order, ints vs floats (``9`` vs ``9.0``) and float digits
do. The "outputs" reward is 1 only if every required output, lower-cased, is a substring of some
agent message to the user, lower-cased with commas removed. reward = r_actions * r_outputs.

Here the gold replay runs once per task on its own copy-on-write database (never the env's) and
only the canonical strings of the records it touched are kept. At grading time both databases
share the base, so they are equal iff every record touched by either side has the same canonical
string — O(records touched), not O(database).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .common import TRANSFER_TOOL, Tool, run_tool
from .data import Dataset, TauDB, Task, canonical, to_hashable

OUTPUT_MODES = ("v1", "strict")


@dataclass(frozen=True)
class GoldResult:
    """What replaying a task's gold actions gives: canonical strings of every touched record,
    each call's observation, and the records that really changed."""

    records: dict[tuple[str, str], str | None]
    observations: tuple[str, ...]
    changed_keys: tuple[tuple[str, str], ...]

    @property
    def changes_db(self) -> bool:
        return bool(self.changed_keys)


def replay(ds: Dataset, tools: Mapping[str, Tool], task: Task, db: TauDB | None = None) -> tuple[TauDB, list[str]]:
    """Replay the gold actions (minus transfers) on a fresh copy-on-write database."""
    db = db if db is not None else ds.new_db()
    obs = []
    for a in task.actions:
        if a.name == TRANSFER_TOOL:
            continue
        obs.append(run_tool(tools, db, a.name, a.kwargs))
    return db, obs


def gold_result(ds: Dataset, tools: Mapping[str, Tool], task: Task) -> GoldResult:
    """The task's gold result, computed once per process and cached on the dataset."""
    cached = ds.gold_cache.get(task.task_id)
    if cached is not None:
        return cached
    db, obs = replay(ds, tools, task)
    records = {}
    changed = []
    for (t, k), rec in db.touched().items():
        c = canonical(rec)
        records[(t, k)] = c
        if c != ds.base_canonical(t, k):
            changed.append((t, k))
    res = GoldResult(records=records, observations=tuple(obs), changed_keys=tuple(sorted(changed)))
    ds.gold_cache[task.task_id] = res
    return res


def db_mismatches(ds: Dataset, db: TauDB, gold: GoldResult) -> list[tuple[str, str]]:
    """Records whose canonical form differs between the env's database and the gold database."""
    ours = db.touched()
    out = []
    for key in set(ours) | set(gold.records):
        mine = canonical(ours[key]) if key in ours else ds.base_canonical(*key)
        theirs = gold.records[key] if key in gold.records else ds.base_canonical(*key)
        if mine != theirs:
            out.append(key)
    return sorted(out)


def output_found(output: str, messages: Iterable[str], mode: str = "v1") -> bool:
    """v1: ``output.lower() in message.lower().replace(",", "")`` for some agent message.

    ``strict``: the output must appear as a whole token sequence (not inside a longer number or
    word), e.g. "10" does not match "100" or "10.5"; commas are removed as in v1."""
    target = output.lower()
    if mode == "v1":
        return any(target in m.lower().replace(",", "") for m in messages)
    if mode == "strict":
        pat = re.compile(r"(?<![\w.])" + re.escape(target.replace(",", "")) + r"(?![\w]|\.\d)")
        return any(pat.search(m.lower().replace(",", "")) for m in messages)
    raise ValueError(f"outputs mode must be one of {OUTPUT_MODES}, got {mode!r}")


@dataclass
class RewardInfo:
    reward: float
    r_actions: float
    r_outputs: float
    db_match: bool
    outputs: dict[str, bool] = field(default_factory=dict)
    mismatched_records: list[str] = field(default_factory=list)
    outputs_mode: str = "v1"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reward": self.reward, "r_actions": self.r_actions, "r_outputs": self.r_outputs,
            "db_match": self.db_match, "outputs_match": self.r_outputs == 1.0,
            "outputs": dict(self.outputs), "mismatched_records": list(self.mismatched_records),
            "outputs_mode": self.outputs_mode,
        }


def compute_reward(ds: Dataset, tools: Mapping[str, Tool], task: Task, db: TauDB,
                   agent_messages: Iterable[str], outputs_mode: str = "v1") -> RewardInfo:
    """Grade an episode. Reads ``db``; never writes it."""
    gold = gold_result(ds, tools, task)
    mism = db_mismatches(ds, db, gold)
    r_actions = 0.0 if mism else 1.0
    msgs = list(agent_messages)
    found = {o: output_found(o, msgs, outputs_mode) for o in task.outputs}
    r_outputs = 1.0 if all(found.values()) else 0.0
    return RewardInfo(reward=r_actions * r_outputs, r_actions=r_actions, r_outputs=r_outputs,
                      db_match=not mism, outputs=found,
                      mismatched_records=[f"{t}/{k}" for t, k in mism], outputs_mode=outputs_mode)


def full_db_hash(tables: Mapping[str, Any]) -> str:
    """v1's whole-database hash (used by the straightforward baseline and in tests)."""
    plain = {name: (dict(t.items()) if hasattr(t, "items") else t) for name, t in tables.items()}
    return hashlib.sha256(str(to_hashable(plain)).encode("utf-8")).hexdigest()
