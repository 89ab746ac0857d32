"""torch.distributed under torchrun: setup and teardown, rank helpers, reductions.

The trainer never starts processes itself. ``torchrun`` starts one per device and sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``init_distributed()`` joins those processes into a process group (nccl on CUDA, gloo
elsewhere). Without torchrun, or with a single process, every helper here is a no-op, so the
same code runs on one device unchanged.

Collectives (``all_reduce_sum``, ``max_over_ranks``, ``all_gather_object``, ``broadcast_object``,
``broadcast_buffers``, ``barrier``) must be called by every rank, in the same order, or the
ranks wait for each other forever.

Example:
    >>> owns = init_distributed("auto")  # no-op outside torchrun
    >>> try:
    ...     Engine(model, data).fit()
    ... finally:
    ...     if owns:
    ...         destroy_distributed()
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from trainer.device import resolve_device

log = logging.getLogger("trainer")

F = TypeVar("F", bound=Callable[..., Any])

# Offsets each rank's seed so ranks augment (and drop out) differently; rank 0 keeps the
# plain seed, so a single process draws what it always drew.
_RANK_SEED_STRIDE = 1_000_003


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process; one
    process too (``--nproc_per_node 1``): it then trains through DDP over a group of one."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str | torch.device = "auto") -> bool:
    """Join the torchrun process group; idempotent.

    Uses nccl when ``device`` resolves to CUDA (and pins this process to the GPU of its local
    rank), gloo otherwise. Does nothing outside torchrun or when a group is already up.

    Args:
        device: the device the run trains on, as ``Engine`` takes it ("auto", "cpu", "cuda"...).

    Returns:
        True when this call created the group; the caller then owns ``destroy_distributed()``.
    """
    if not dist.is_available() or dist.is_initialized() or not launched_by_torchrun():
        return False
    dev = resolve_device(device)
    if dev.type == "cuda":
        local = get_local_rank()
        torch.cuda.set_device(local)
        # device_id binds the group to this GPU at once, so barriers know which GPU to use.
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
    else:
        dist.init_process_group("gloo")
    log.debug("joined process group: rank %d of %d", get_rank(), get_world_size())
    return True


def destroy_distributed() -> None:
    """Leave the process group, if one is up; safe to call more than once."""
    if dist.is_available() and dist.is_initialized():
        _HOST_GROUP.clear()
        dist.destroy_process_group()


def in_process_group() -> bool:
    """Whether a process group is up, of one rank or more (then the engine trains through DDP)."""
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """Whether a process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank() -> int:
    """This process's rank on its machine (torchrun's ``LOCAL_RANK``); 0 without torchrun."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_global_zero() -> bool:
    """Whether this process is rank 0, the one that writes files and prints."""
    return get_rank() == 0


def rank_seed(seed: int, rank: int | None = None) -> int:
    """``seed`` for rank 0, a different seed for every other rank."""
    return seed + _RANK_SEED_STRIDE * (get_rank() if rank is None else rank)


def device_for_rank(device: torch.device) -> torch.device:
    """Under a process group, a CUDA device without an index becomes this rank's GPU."""
    if device.type == "cuda" and device.index is None and in_process_group():
        return torch.device("cuda", get_local_rank())
    return device


def rank_zero_only(fn: F) -> F:
    """Run ``fn`` on rank 0 only (returning None elsewhere): for hook methods that write or print.

    Only for methods with no collective inside: the other ranks skip the call entirely.
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if is_global_zero():
            return fn(*args, **kwargs)
        return None

    return wrapped  # type: ignore[return-value]


# --------------------------------------------------------------------------- collectives
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it; unchanged in a single process.

    The tensor must live on the group's device kind: CUDA for nccl, CPU for gloo.
    """
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_over_ranks(values: list[int]) -> list[int]:
    """The element-wise max of a few host integers over all ranks (``values`` elsewhere).

    Reduced on the CPU over gloo (a side group when the main one is nccl), so it never makes
    the host wait for the GPU: cheap enough to run after every training step, e.g. to agree
    on a stop.
    """
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group())
    return [int(v) for v in t.tolist()]


_HOST_GROUP: dict[str, Any] = {}


def _host_group() -> Any:
    """A gloo group over every rank: the default group when it is gloo, else one made once.

    Made by a collective call: the first ``max_over_ranks`` must run on every rank (the engine
    calls it after every step, on every rank).
    """
    if dist.get_backend() == "gloo":
        return None
    if "group" not in _HOST_GROUP:
        _HOST_GROUP["group"] = dist.new_group(backend="gloo")
    return _HOST_GROUP["group"]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a run folder named after rank 0's clock)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def training_forward(
    model: torch.nn.Module, device: torch.device, compile: bool = False
) -> tuple[torch.nn.parallel.DistributedDataParallel | None, torch.nn.Module]:
    """The DDP wrapper (under a process group, of one rank too; else None) and the module the
    training forward runs: the wrapper or ``model``, through ``torch.compile`` if asked.

    DDP wraps the training forward only (``model`` stays the plain module that evaluation,
    EMA, checkpoints and export use); building it broadcasts rank 0's weights to every rank.
    """
    ids = [device.index] if device.type == "cuda" else None
    ddp = (
        torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if in_process_group()
        else None
    )
    train_model = ddp or model
    # dynamic=False: the short last batch would otherwise make dynamo recompile with
    # symbolic shapes, and that slower graph then serves every full batch too.
    forward: Any = torch.compile(train_model, dynamic=False) if compile else train_model
    return ddp, forward


def grad_sync(ddp: torch.nn.parallel.DistributedDataParallel | None, stepping: bool) -> Any:
    """Where DDP all-reduces the gradients in backward: on micro-batches that step; those that
    only accumulate run under ``no_sync``."""
    return contextlib.nullcontext() if ddp is None or stepping else ddp.no_sync()


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics) into every rank's ``module``.

    DDP keeps parameters equal on all ranks, but each rank's forward passes update its own
    BatchNorm statistics (and its EMA of them). Before an evaluation the engine makes every
    rank use rank 0's, the ones rank 0 checkpoints and exports, so the summed metrics are
    those of the saved model, and a resumed run (which loads rank 0's) continues exactly.
    """
    if is_distributed():
        for buf in module.buffers():
            dist.broadcast(buf, src=src)


def barrier() -> None:
    """Wait until every rank gets here; a no-op in a single process."""
    if is_distributed():
        dist.barrier()
