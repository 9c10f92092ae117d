"""Tau-bench data: loading (official or generated), tasks, and the copy-on-write database.

How it stays fast:

* A :class:`Dataset` (tables + tasks + policy) is loaded **once per process** and shared,
  read-only, by every env instance (:func:`load_official` is cached by path).
* An episode's database is a :class:`TauDB`: one :class:`Table` per table, each a read-only
  *base* dict (shared) plus a small per-episode *overlay* holding the records the episode has
  written. ``reset`` just clears the overlays, so it costs O(number of tables), never a deep copy
  or a re-read of the JSON files. A tool that writes a record first calls :meth:`Table.mut`,
  which copies that one record into the overlay.
* v1 compares databases by hashing ``str(to_hashable(db))`` (dict items sorted by key, lists kept
  in order). Two databases with the same base differ only in records that one of them wrote, so
  we compare the canonical strings of those records only (see :mod:`.reward`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_VAR = "HERO_GYM_TAUBENCH_DIR"

DOMAIN_TABLES = {
    "retail": ("users", "orders", "products"),
    "airline": ("users", "flights", "reservations"),
}
OFFICIAL_SPLITS = {"retail": ("train", "test", "dev"), "airline": ("test",)}

_DELETED = object()


def fast_copy(x: Any) -> Any:
    """Deep copy of JSON-like data (dicts, lists, scalars); ~5x faster than ``copy.deepcopy``."""
    if isinstance(x, dict):
        return {k: fast_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [fast_copy(v) for v in x]
    return x


def to_hashable(item: Any) -> Any:
    """v1's canonical form of a database value: dicts become tuples of key-sorted items,
    lists become tuples (order kept). v1 hashes ``sha256(str(to_hashable(db)))``."""
    if isinstance(item, dict):
        return tuple((k, to_hashable(v)) for k, v in sorted(item.items()))
    if isinstance(item, (list, tuple)):
        return tuple(to_hashable(v) for v in item)
    if isinstance(item, set):
        return tuple(sorted(to_hashable(v) for v in item))
    return item


def canonical(record: Any) -> str | None:
    """The string v1 would hash for a record (``None`` for an absent record)."""
    if record is None:
        return None
    return str(to_hashable(record))


class Table:
    """A table (``key -> record``) with a shared read-only base and a per-episode overlay.

    ``get``/``[]``/iteration return the current record; records returned by them must be
    treated as read-only. Call :meth:`mut` to get a private, writable copy of a record.
    """

    __slots__ = ("name", "base", "over")

    def __init__(self, name: str, base: dict[str, Any]):
        self.name = name
        self.base = base
        self.over: dict[str, Any] = {}

    # -- reads
    def get(self, key: Any, default: Any = None) -> Any:
        if not isinstance(key, str):
            return default
        over = self.over
        if over and key in over:
            rec = over[key]
            return default if rec is _DELETED else rec
        return self.base.get(key, default)

    def __getitem__(self, key: str) -> Any:
        rec = self.get(key, _DELETED)
        if rec is _DELETED:
            raise KeyError(key)
        return rec

    def __contains__(self, key: Any) -> bool:
        return self.get(key, _DELETED) is not _DELETED

    def keys(self) -> Iterator[str]:
        for k, _ in self.items():
            yield k

    def values(self) -> Iterator[Any]:
        for _, v in self.items():
            yield v

    def items(self) -> Iterator[tuple[str, Any]]:
        """Items in v1 dict order: base order, then records added in this episode."""
        over = self.over
        if not over:
            yield from self.base.items()
            return
        for k, v in self.base.items():
            if k in over:
                v = over[k]
                if v is _DELETED:
                    continue
            yield k, v
        for k, v in over.items():
            if k not in self.base and v is not _DELETED:
                yield k, v

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    # -- writes
    def mut(self, key: str) -> Any:
        """A writable record: copied into the overlay on first write (copy-on-write)."""
        over = self.over
        rec = over.get(key, _DELETED)
        if rec is _DELETED:
            if key not in self.base:
                raise KeyError(key)
            rec = over[key] = fast_copy(self.base[key])
        return rec

    def put(self, key: str, record: Any) -> None:
        self.over[key] = record

    def delete(self, key: str) -> None:
        self.over[key] = _DELETED

    # -- bookkeeping
    def touched(self) -> dict[str, Any]:
        """Records this episode wrote (``None`` = deleted). They may equal the base record."""
        return {k: (None if v is _DELETED else v) for k, v in self.over.items()}

    def clear(self) -> None:
        self.over = {}


class TauDB:
    """A domain database: named :class:`Table` objects sharing one read-only base."""

    def __init__(self, base: dict[str, dict[str, Any]]):
        self.tables = {name: Table(name, recs) for name, recs in base.items()}

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    def __getattr__(self, name: str) -> Table:
        try:
            return self.__dict__["tables"][name]
        except KeyError:
            raise AttributeError(name) from None

    def reset(self) -> None:
        """Back to the initial state in O(#tables): drop the overlays."""
        for t in self.tables.values():
            t.clear()

    def touched(self) -> dict[tuple[str, str], Any]:
        out = {}
        for name, t in self.tables.items():
            for k, v in t.touched().items():
                out[(name, k)] = v
        return out

    def changed(self) -> dict[str, dict[str, Any]]:
        """Records that differ from the base (table -> key -> record, ``None`` = deleted)."""
        out: dict[str, dict[str, Any]] = {}
        for name, t in self.tables.items():
            for k, v in t.touched().items():
                if canonical(v) != canonical(t.base.get(k)):
                    out.setdefault(name, {})[k] = v
        return out

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A plain (deep-copied) snapshot of the current database."""
        return {name: {k: fast_copy(v) for k, v in t.items()} for name, t in self.tables.items()}


@dataclass(frozen=True)
class Action:
    name: str
    kwargs: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": fast_copy(self.kwargs)}


@dataclass(frozen=True)
class Task:
    """One task: the user, the instruction (held by the user simulator), gold calls, outputs."""

    task_id: str
    user_id: str
    instruction: str
    actions: tuple[Action, ...]
    outputs: tuple[str, ...] = ()
    index: int = 0
    split: str = "test"

    @classmethod
    def from_dict(cls, d: dict[str, Any], task_id: str, index: int, split: str) -> Task:
        return cls(
            task_id=task_id,
            user_id=d["user_id"],
            instruction=d["instruction"],
            actions=tuple(Action(a["name"], dict(a.get("kwargs") or {})) for a in d.get("actions", [])),
            outputs=tuple(d.get("outputs") or ()),
            index=index,
            split=split,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "user_id": self.user_id,
            "instruction": self.instruction,
            "actions": [a.to_dict() for a in self.actions],
            "outputs": list(self.outputs),
        }


@dataclass
class Dataset:
    """Everything read-only about one domain's data, shared by all env instances."""

    domain: str
    source: str                                   # "official" or "generated"
    ident: str                                    # unique id (path or generator parameters)
    tables: dict[str, dict[str, Any]]             # base tables, never mutated
    tasks: dict[str, list[Task]]                  # split -> tasks
    policy: str                                   # the agent's system prompt (domain policy)
    tool_schemas: list[dict[str, Any]] | None = None  # OpenAI-style schemas (None -> our own)
    path: str | None = None                       # the official data folder (None: generated)
    gold_cache: dict[str, Any] = field(default_factory=dict)   # task_id -> gold result
    canon_cache: dict[tuple[str, str], str | None] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """A short hash of the content (tables, tasks, policy, tool schemas): two datasets with the
        same fingerprint give the same episodes. Computed once, on first use."""
        if self._fingerprint is None:
            content = {"domain": self.domain, "tables": self.tables, "policy": self.policy,
                       "tool_schemas": self.tool_schemas,
                       "tasks": {s: [t.to_dict() for t in ts] for s, ts in self.tasks.items()}}
            blob = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str).encode()
            self._fingerprint = hashlib.sha256(blob).hexdigest()[:16]
        return self._fingerprint

    def describe(self) -> dict[str, Any]:
        """Which data this is, for results: ``source`` (official/generated), ``path`` (the official
        folder or ``None``), ``ident`` and ``fingerprint``."""
        return {"domain": self.domain, "source": self.source, "path": self.path, "ident": self.ident,
                "fingerprint": self.fingerprint()}

    def base_canonical(self, table: str, key: str) -> str | None:
        ck = (table, key)
        c = self.canon_cache.get(ck, _DELETED)
        if c is _DELETED:
            c = self.canon_cache[ck] = canonical(self.tables[table].get(key))
        return c

    def new_db(self) -> TauDB:
        return TauDB(self.tables)

    def split_names(self) -> list[str]:
        return list(self.tasks)


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The official data directory asked for: the explicit argument, else ``$HERO_GYM_TAUBENCH_DIR``;
    ``None`` when neither is set. The path is not checked (see :func:`official_available`)."""
    d = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if d is None or not str(d).strip():
        return None
    return Path(d).expanduser().resolve()


def official_available(domain: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether the requested directory holds the official data of ``domain``."""
    p = resolve_data_dir(data_dir)
    return p is not None and (p / domain / "users.json").is_file()


_OFFICIAL: dict[tuple[str, str], Dataset] = {}


def load_official(domain: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load the official v1 data of ``domain`` once per process (cached by resolved path)."""
    if domain not in DOMAIN_TABLES:
        raise ValueError(f"unknown domain {domain!r}; expected one of {sorted(DOMAIN_TABLES)}")
    root = resolve_data_dir(data_dir)
    if root is None:
        raise FileNotFoundError(f"no Tau-bench data folder given: pass data_dir=... or set ${ENV_VAR}")
    if not official_available(domain, root):
        given = "data_dir" if data_dir is not None else f"${ENV_VAR}"
        raise FileNotFoundError(f"{given}={str(root)!r} does not hold the Tau-bench {domain} data (no "
                                f"{str(root / domain / 'users.json')!r}); point data_dir or ${ENV_VAR} "
                                f"at the folder that holds {domain}/")
    key = (domain, str(root))
    if key in _OFFICIAL:
        return _OFFICIAL[key]
    ddir = root / domain
    tables = {}
    for t in DOMAIN_TABLES[domain]:
        with open(ddir / f"{t}.json") as f:
            tables[t] = json.load(f)
    tasks = {}
    for split in OFFICIAL_SPLITS[domain]:
        fp = ddir / f"tasks_{split}.json"
        if fp.is_file():
            with open(fp) as f:
                raw = json.load(f)
            tasks[split] = [Task.from_dict(d, f"{domain}/{split}/{i}", i, split) for i, d in enumerate(raw)]
    policy = (ddir / "wiki.md").read_text() if (ddir / "wiki.md").is_file() else ""
    schemas = None
    if (root / "tools_info.json").is_file():
        with open(root / "tools_info.json") as f:
            schemas = json.load(f).get(domain)
    ds = Dataset(domain=domain, source="official", ident=str(ddir), tables=tables, tasks=tasks,
                 policy=policy, tool_schemas=schemas, path=str(root))
    _OFFICIAL[key] = ds
    return ds
