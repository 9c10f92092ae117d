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

**FSDP** (``TrainConfig.sharding="fsdp"``): :func:`fsdp_shard` applies PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``) to every decoder layer and then to the root, so each rank holds
``1/K`` of the (master) weights, of the optimiser state (AdamW moments) and of the EMA teacher's shadow,
and steps the optimiser on its shard. HF generation and the teacher's KV-cache scoring run a
data-dependent number of forward passes on each rank, which FSDP's per-layer all-gathers cannot follow
in lockstep, so compute runs with the weights **gathered**: :func:`gathered` all-gathers every layer
once (rollouts, the model reflector), :func:`fsdp_micro_batches` keeps them gathered through an
update's micro-batches with gradient sync off and ends with one zero-weight forward/backward on every
rank that reduce-scatters the summed gradients (ranks with more micro-batches than others stay in
step). What fits is therefore a model whose (``param_dtype``) weights, gradients and activations fit one
device but whose fp32 master weights and optimiser state do not (full fine-tuning, large LoRA ranks).
Checkpoints are written unsharded by rank 0 inside :func:`full_state`, so they resume on any world size,
with or without FSDP. FSDP2 runs on CPU with gloo (torch 2.13) once its gradient reductions are plain sums (gloo has no
``AVG`` / ``PREMUL_SUM``), so the older FSDP1 wrapper is not used. A sharded model generates only inside
:func:`gathered` entered on every rank (``train`` does this); ``evaluate`` a saved adapter instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["all_reduce_gradients", "broadcast_parameters", "fsdp_micro_batches", "fsdp_shard", "full_state",
           "gather", "gathered", "global_any", "global_counts", "init_from_env", "is_main", "is_sharded", "rank",
           "require_process_group", "save_policy", "shard", "world_size"]

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
    the sum is the gradient of the global batch. Every rank must call it with the same parameters.
    FSDP-sharded parameters (DTensors) are skipped: :func:`fsdp_micro_batches` already reduced them."""
    params = [p for p in params if not _is_dtensor(p)]
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


# ======================================================================================
# FSDP (FSDP2: torch.distributed.fsdp.fully_shard)
# ======================================================================================

def require_process_group(what: str) -> None:
    """Raise a one-line ``RuntimeError`` naming ``what`` unless a torch.distributed process group is up."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"{what} needs torch.distributed: launch with torchrun --nproc_per_node=K "
                           "(or call torch.distributed.init_process_group) first")


def _is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _full(t: Any) -> Any:
    """The whole tensor of a DTensor shard (a collective: every rank must call it); anything else as is."""
    return t.full_tensor() if _is_dtensor(t) else t


def _fsdp_modules(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: Any) -> bool:
    """Whether :func:`fsdp_shard` was applied to ``model``."""
    if not dist.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: modules whose class the model declares in ``_no_split_modules`` (what
    transformers and accelerate use to place and wrap whole blocks)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"FSDP: cannot find the decoder layers of {type(base).__name__} "
                         "(it declares no _no_split_modules)")
    return layers


def _shard_like(value: Any, param: Any) -> Any:
    """``value`` (a full tensor shaped like ``param``'s global shape) sharded the way ``param`` is."""
    if not (_is_dtensor(param) and isinstance(value, torch.Tensor) and not _is_dtensor(value)
            and tuple(value.shape) == tuple(param.shape)):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(param.to_local().device), param.device_mesh, param.placements)


def fsdp_shard(model: torch.nn.Module, *, optimizer: torch.optim.Optimizer | None = None, teacher: Any = None,
               mixed_precision: str | None = None) -> None:
    """Shard ``model`` in place with FSDP2: ``fully_shard`` on every decoder layer, then on the root (which
    keeps the embeddings, the final norm and the output head, tied or not). Every rank must call it, with
    identical weights (:func:`broadcast_parameters` first).

    ``optimizer`` (built over the unsharded trainable parameters, possibly with restored state) is moved
    onto the sharded parameters and its state sharded; ``teacher`` (a
    :class:`~hero_gym.agents.teachers.TeacherWeights`) gets its EMA shadow sharded. Gradients are **summed**
    over ranks (the trainer normalises the loss by global token counts), with sum-only collectives, which
    gloo requires. ``mixed_precision="bf16"``: FSDP's ``MixedPrecisionPolicy(param_dtype=bfloat16,
    reduce_dtype=float32)`` (gathered weights and activations in bf16, fp32 master weights and gradient
    reduction); ``None`` keeps the model's dtype.

    Raises ``RuntimeError`` without an initialised process group and ``ValueError`` for an already sharded
    model, an unknown ``mixed_precision`` or a model without recognisable decoder layers."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    require_process_group("sharding='fsdp'")
    if is_sharded(model):
        raise ValueError("the model is already FSDP-sharded")
    policies = {None: MixedPrecisionPolicy(),
                "bf16": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)}
    if mixed_precision not in policies:
        raise ValueError(f"mixed_precision must be None or 'bf16', got {mixed_precision!r}")
    names = {id(p): n for n, p in model.named_parameters()}
    kw = {"reshard_after_forward": True, "mp_policy": policies[mixed_precision]}
    for layer in _decoder_layers(model):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    for m in _fsdp_modules(model):
        m.set_gradient_divide_factor(1.0)             # sum, not mean, over ranks ...
        m.set_force_sum_reduction_for_comms(True)     # ... with ReduceOp.SUM (gloo has no AVG / PREMUL_SUM)
        m.set_reduce_scatter_unused_params(True, recurse=False)   # same collectives on every rank
    model._get_fsdp_state()._lazy_init()   # the root is `model` even when the trainer calls its decoder only
    new = dict(model.named_parameters())
    if optimizer is not None:
        for group in optimizer.param_groups:
            olds = list(group["params"])
            unknown = [p for p in olds if id(p) not in names]
            if unknown:
                raise ValueError("FSDP: the optimizer holds parameters that are not the model's")
            group["params"] = [new[names[id(p)]] for p in olds]
            for old, p in zip(olds, group["params"]):
                if old in optimizer.state:
                    optimizer.state[p] = {k: _shard_like(v, p) for k, v in optimizer.state.pop(old).items()}
    if teacher is not None and getattr(teacher, "shadow", None):
        teacher.shadow = {n: _shard_like(v, new[n]) for n, v in teacher.shadow.items()}


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Inside: every FSDP unit of ``model`` unsharded (one all-gather each, on entering) and kept so, so any
    number of forward passes (generation, scoring) runs without collectives and ranks need not stay in
    step. The parameters seen inside are plain full tensors; changes to them are **not** written back.
    Every rank must enter it together. A no-op for a model that is not sharded."""
    if not is_sharded(model):
        yield
        return
    mods = _fsdp_modules(model)
    model.set_reshard_after_forward(False)
    try:
        for m in mods:
            m.unshard()
        yield
    finally:
        for m in mods:
            m.reshard()
        model.set_reshard_after_forward(True)


def fsdp_micro_batches(model: torch.nn.Module, teacher: Any, batches: Iterable[T]) -> Iterator[T]:
    """``batches`` as they are for an unsharded model. For an FSDP-sharded one, the update's micro-batch
    loop: the weights are gathered (:func:`gathered`; the EMA teacher's shadow too, so that
    ``teacher.active()`` swaps whole tensors) and gradients accumulate locally, without communication, over
    this rank's micro-batches; after the last one, one zero-weight forward/backward through the whole model
    on every rank reduce-scatters the accumulated gradients (summed over ranks) into the sharded
    ``param.grad``. Ranks may have different numbers of micro-batches. Every rank must exhaust it."""
    if not is_sharded(model):
        yield from batches
        return
    shadow = getattr(teacher, "shadow", None) or None
    model.set_requires_gradient_sync(False)
    model.set_reshard_after_backward(False)
    model.set_is_last_backward(False)
    try:
        with gathered(model):
            if shadow is not None:
                teacher.shadow = {n: _full(v) for n, v in shadow.items()}
            yield from batches
            model.set_requires_gradient_sync(True)
            model.set_is_last_backward(True)
            _zero_pass(model)
    finally:
        if shadow is not None:
            teacher.shadow = shadow
        model.set_requires_gradient_sync(True)
        model.set_reshard_after_backward(True)
        model.set_is_last_backward(True)


def _zero_pass(model: torch.nn.Module) -> None:
    """A one-token forward/backward through the whole model whose loss is ``0 * logits``: every trainable
    parameter gets a (zero) gradient contribution, so every FSDP unit runs its gradient reduction."""
    dev = next(iter(model.parameters())).device
    was_training = model.training
    model.train()
    try:
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=dev), use_cache=False)
        (out.logits.float().sum() * 0.0).backward()
    finally:
        model.train(was_training)


@contextlib.contextmanager
def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
               teacher: Any = None) -> Iterator[None]:
    """Inside: ``model``'s trainable parameters, ``optimizer``'s state and ``teacher``'s EMA shadow are
    whole (unsharded) tensors in their master dtype (fp32 under bf16 mixed precision), so the checkpoint
    code writes a full checkpoint that resumes on any world size. Frozen parameters stay sharded (no
    checkpoint reads them). Every rank must enter it (all-gathers); rank 0 writes. Restored on exit. A
    no-op unless sharded."""
    if not is_sharded(model):
        yield
        return
    swapped: list[tuple[torch.nn.Module, str, Any]] = []
    saved_opt: list[tuple[dict, str, Any]] = []
    shadow = getattr(teacher, "shadow", None) or None
    try:
        whole: dict[int, torch.nn.Parameter] = {}
        with torch.no_grad():
            for mod in model.modules():
                for name, p in list(mod.named_parameters(recurse=False)):
                    if p.requires_grad and _is_dtensor(p):
                        if id(p) not in whole:            # tied parameters stay tied
                            whole[id(p)] = torch.nn.Parameter(p.full_tensor(), requires_grad=True)
                        swapped.append((mod, name, p))
                        setattr(mod, name, whole[id(p)])
        if optimizer is not None:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    st = optimizer.state.get(p, {})
                    for k in sorted(st):
                        if _is_dtensor(st[k]):
                            saved_opt.append((st, k, st[k]))
                            st[k] = st[k].full_tensor()
        if shadow is not None:
            teacher.shadow = {n: _full(v) for n, v in shadow.items()}
        yield
    finally:
        for mod, name, p in swapped:
            setattr(mod, name, p)
        for st, k, v in saved_opt:
            st[k] = v
        if shadow is not None:
            teacher.shadow = shadow


def save_policy(policy: Any, path: str | Path) -> None:
    """``policy.save(path)`` on rank 0; for an FSDP-sharded policy every rank must call it: the full state
    dict is gathered (``torch.distributed.checkpoint.state_dict``) and rank 0 writes the adapter (or full
    model) from it, in the same format as an unsharded save."""
    if not is_sharded(policy.model):
        if is_main():
            policy.save(path)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(policy.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if is_main():
        policy.save(path, state_dict=full)
