"""Data-parallel training over ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

When a process group is initialised (``torchrun`` sets ``RANK``/``WORLD_SIZE``; :func:`init_from_env`
joins it), :func:`hero_gym.agents.trainer.train` runs the same algorithm on ``K`` ranks:

* every rank collects its **share** of an iteration's tasks (:func:`shard`: contiguous blocks of tasks, so a
  GRPO group never straddles two ranks and its advantages are the single-process ones), reflects on and
  writes notes for its own episodes;
* the episodes are gathered to every rank (:func:`gather`), so the turn counter, the success buffer and the
  stop decision are the same everywhere and the **turn budget is global** (each task runs on exactly one
  rank and its turns are counted once);
* :func:`~hero_gym.agents.trainer.update` normalises each loss by the token counts of the *whole* batch
  (:func:`global_counts`) and sums the gradients over ranks (:func:`all_reduce_gradients`) before clipping
  and the optimiser step, so one update equals the single-process update on the global batch up to float
  summation order;
* only rank 0 writes checkpoints, logs and snapshots (:func:`is_main`); every rank reads the checkpoint
  when resuming, so a run resumes on any world size (the task order depends only on the iteration).

Without a process group (or with one rank) every function here is the identity / a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["all_reduce_gradients", "broadcast_parameters", "gather", "global_any", "global_counts",
           "init_from_env", "is_main", "rank", "shard", "world_size"]

T = TypeVar("T")


def world_size() -> int:
    """Number of ranks (1 without an initialised process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without an initialised process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this rank writes files (rank 0)."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``). ``backend`` defaults to ``"nccl"`` when CUDA is available, else
    ``"gloo"``. Returns whether a group with more than one rank is active; with no ``WORLD_SIZE`` (plain
    ``python``) nothing is done and ``False`` is returned."""
    if dist.is_initialized():
        return dist.get_world_size() > 1
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={ws} but {', '.join(missing)} not set; launch with torchrun")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's contiguous block of ``items`` (the first ``len % world`` ranks get one more). Blocks in
    rank order concatenate to ``items``."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if not 0 <= r < w:
        raise ValueError(f"rank {r} out of range for world size {w}")
    base, extra = divmod(len(items), w)
    start = r * base + min(r, extra)
    return list(items[start:start + base + (r < extra)])


def gather(items: Sequence[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order, on every rank (``list(items)`` on one rank)."""
    if world_size() == 1:
        return list(items)
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def global_counts(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over ranks (``values`` itself on one rank). Every rank must call it."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(x) for x in t.cpu()]


def global_any(mask: torch.Tensor) -> bool:
    """Whether ``mask`` has a true element on any rank. Every rank must call it."""
    return global_counts([float(bool(mask.any()))])[0] > 0


def all_reduce_gradients(params: Sequence[torch.Tensor], bucket_elements: int = 1 << 24) -> None:
    """Sum the gradients of ``params`` over ranks, in place (a rank with no gradient contributes zeros),
    in flat buckets of about ``bucket_elements`` values. The loss is normalised by global token counts, so
    the sum is the gradient of the global batch. Every rank must call it with the same parameters."""
    if world_size() == 1 or not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    dev = _collective_device()
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(p)
        size += p.grad.numel()
        if size >= bucket_elements or i == len(params) - 1:
            flat = torch.cat([q.grad.reshape(-1).to(dev) for q in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for q in bucket:
                n = q.grad.numel()
                q.grad.copy_(flat[offset:offset + n].view_as(q.grad))
                offset += n
            bucket, size = [], 0


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (identical starting weights, as DDP does)."""
    if world_size() == 1:
        return
    dev = _collective_device()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            buf = t.data.to(dev)
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)
