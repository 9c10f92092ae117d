"""Checkpoint and log I/O of a training run, and the nested-budget weight snapshots.

Layout of ``checkpoint_dir``::

    config.json                      the TrainConfig of the run
    checkpoint.pt                    resume state (atomic): trainable weights, optimiser, teacher EMA,
                                     success buffer, RNG states (CPU and every GPU), counters
    episodes.jsonl / metrics.jsonl   one line per training episode / per iteration
    snapshots/turns_<T:07d>/         the trainable weights at the end of the iteration that brought the
        weights.safetensors          run to T training turns (``turns_0000000`` = the starting weights),
        snapshot.json                with {turns, episodes, optimizer_steps, tokens_trained}; an
                                     iteration without an optimizer step writes only snapshot.json,
                                     with ``weights_of`` naming the snapshot whose weights it has

A killed run resumes from ``checkpoint.pt``: the JSONL logs are cut back to the lines the checkpoint
covers and later snapshots are removed, so nothing is lost or logged twice.

Nested budgets: one run to the largest budget serves every smaller one — the model at budget ``B`` is
the **first snapshot at or past B** (:func:`snapshot_for_budget`): budgets count whole batches, so the
batch that crosses ``B`` belongs to it (the trainer starts a batch while fewer than its budget's turns
are spent), and the top budget evaluates the run's final weights.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RunCounters", "RunFiles", "list_snapshots", "load_snapshot", "save_snapshot", "snapshot_for_budget"]

SNAPSHOT_WEIGHTS = "weights.safetensors"
SNAPSHOT_META = "snapshot.json"


@dataclass
class RunCounters:
    """What a run has spent and done so far (saved in checkpoints and snapshots)."""

    iterations: int = 0
    """Collect-and-update rounds."""
    optimizer_steps: int = 0
    """Rounds whose loss had trainable tokens (a GRPO batch with equal rewards, or a full-demo batch
    without any demonstration, changes nothing and takes no step)."""
    tokens_trained: int = 0
    """Action tokens that entered a loss with a non-zero signal."""
    turns: int = 0
    """Environment turns spent on training rollouts."""
    episodes: int = 0
    successes: int = 0


# --------------------------------------------------------------------------- snapshots

def _trainable_state(model: Any, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", dtype or p.dtype).contiguous().clone()
            for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ValueError(f"the saved weights have parameters this model lacks: {missing[:5]}")
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v.to(params[n].device))


def save_snapshot(policy: Any, checkpoint_dir: str | Path, counters: RunCounters, *,
                  weights_of: int | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write the trainable weights and ``counters`` to ``snapshots/turns_<T:07d>/`` (T = ``counters.turns``).

    ``weights_of``: the turns of an earlier snapshot whose weights these are (no optimizer step since):
    only the metadata is written, pointing at it. ``dtype``: cast the weights (e.g. bfloat16 to halve a
    LoRA snapshot); :func:`load_snapshot` casts them back to the policy's dtype."""
    from safetensors.torch import save_file

    path = Path(checkpoint_dir) / "snapshots" / f"turns_{counters.turns:07d}"
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta: dict[str, Any] = {"turns": counters.turns, "episodes": counters.episodes,
                            "optimizer_steps": counters.optimizer_steps, "tokens_trained": counters.tokens_trained}
    if weights_of is None:
        save_file(_trainable_state(policy.model, dtype), str(tmp / SNAPSHOT_WEIGHTS))
    else:
        meta["weights_of"] = f"turns_{weights_of:07d}"
    (tmp / SNAPSHOT_META).write_text(json.dumps(meta))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def list_snapshots(checkpoint_dir: str | Path) -> dict[int, Path]:
    """``{training turns T: snapshot dir}`` of a run, sorted by ``T`` (empty when there are none)."""
    root = Path(checkpoint_dir) / "snapshots"
    found: dict[int, Path] = {}
    if root.is_dir():
        for d in root.iterdir():
            name = d.name
            if name.startswith("turns_") and name[6:].isdigit() and (d / SNAPSHOT_META).exists():
                found[int(name[6:])] = d
    return dict(sorted(found.items()))


def snapshot_for_budget(checkpoint_dir: str | Path, budget: int) -> Path:
    """The model a run had at ``budget`` training turns: the first snapshot at or past ``budget`` (the end of
    the whole batch that reached it). ``FileNotFoundError`` when the run stopped before ``budget``."""
    snaps = list_snapshots(checkpoint_dir)
    reached = [p for t, p in snaps.items() if t >= budget]
    if not reached:
        raise FileNotFoundError(f"no snapshot at or past {budget} turns under {checkpoint_dir} "
                                f"(the run has {sorted(snaps)})")
    return reached[0]


def load_snapshot(policy: Any, path: str | Path) -> dict[str, Any]:
    """Load a snapshot's weights into ``policy.model`` in place; returns its metadata (turns, ...)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / SNAPSHOT_META).read_text())
    weights, m, seen = path, meta, {path.name}
    while "weights_of" in m:   # an iteration without a step: the weights are an earlier snapshot's
        weights = path.parent / m["weights_of"]
        if weights.name in seen:
            raise ValueError(f"snapshot {path} points at its own weights in a cycle")
        seen.add(weights.name)
        m = json.loads((weights / SNAPSHOT_META).read_text())
    _load_trainable(policy.model, load_file(str(weights / SNAPSHOT_WEIGHTS)))
    return meta


# --------------------------------------------------------------------------- resume state and logs

def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():   # every visible GPU's generator (sampling and dropout draw there)
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        if len(s["cuda"]) != torch.cuda.device_count():
            raise ValueError(f"the checkpoint holds the RNG state of {len(s['cuda'])} GPU(s) but "
                             f"{torch.cuda.device_count()} are visible: resume with the same CUDA_VISIBLE_DEVICES")
        torch.cuda.set_rng_state_all(s["cuda"])


def _append_lines(path: Path, lines: Sequence[str]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for ln in lines:
            f.write(ln + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_lines(path: Path, n: int) -> None:
    """Keep the first ``n`` complete lines of ``path`` (drops lines of an uncommitted iteration)."""
    if not path.exists():
        return
    kept = [ln for ln in path.read_bytes().split(b"\n") if ln.strip()][:n]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(b"".join(ln + b"\n" for ln in kept))
    os.replace(tmp, path)


class RunFiles:
    """The files of one run directory (see the module docstring)."""

    CHECKPOINT, EPISODES, METRICS, CONFIG = "checkpoint.pt", "episodes.jsonl", "metrics.jsonl", "config.json"

    def __init__(self, checkpoint_dir: str | Path):
        self.dir = Path(checkpoint_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def has_checkpoint(self) -> bool:
        return (self.dir / self.CHECKPOINT).exists()

    def start_fresh(self, config: Any) -> None:
        """Remove a previous run's state, logs and snapshots; write ``config.json``."""
        for f in (self.CHECKPOINT, self.EPISODES, self.METRICS):
            (self.dir / f).unlink(missing_ok=True)
        shutil.rmtree(self.dir / "snapshots", ignore_errors=True)
        self.write_config(config)

    def write_config(self, config: Any) -> None:
        (self.dir / self.CONFIG).write_text(json.dumps(asdict(config), indent=2, default=str))

    def save(self, *, model: Any, optimizer: Any, teacher: Any, buffer: Any, counters: RunCounters) -> None:
        """Atomically replace the resume checkpoint (a kill leaves the previous one intact)."""
        payload = {"trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
                   "teacher": teacher.state_dict(), "success_buffer": buffer.state_dict(), "rng": _rng_state(),
                   "counters": asdict(counters)}
        tmp = self.dir / (self.CHECKPOINT + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.dir / self.CHECKPOINT)

    def restore(self, *, model: Any, optimizer: Any, teacher: Any, buffer: Any) -> tuple[RunCounters, list[dict]]:
        """Load the checkpoint into the given objects and cut the logs and snapshots back to it.

        Returns the counters and the metric rows logged so far."""
        state = torch.load(self.dir / self.CHECKPOINT, map_location="cpu", weights_only=False)
        _load_trainable(model, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        teacher.load_state_dict(state["teacher"])
        buffer.load_state_dict(state["success_buffer"])
        _set_rng_state(state["rng"])
        counters = RunCounters(**state["counters"])
        _truncate_lines(self.dir / self.EPISODES, counters.episodes)
        _truncate_lines(self.dir / self.METRICS, counters.iterations)
        for t, p in list_snapshots(self.dir).items():
            if t > counters.turns:
                shutil.rmtree(p)
        metrics_path = self.dir / self.METRICS
        rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()] if metrics_path.exists() else []
        return counters, rows

    def log(self, episodes: Sequence[Any], metrics_row: dict[str, Any]) -> None:
        """Append an iteration's episodes and its metrics row (committed by the next :meth:`save`)."""
        _append_lines(self.dir / self.EPISODES, [ep.model_dump_json() for ep in episodes])
        _append_lines(self.dir / self.METRICS, [json.dumps(metrics_row, default=str)])
