"""What an engine saves to resume exactly, and putting it back.

``Engine.checkpoint_dict`` and ``Engine.load_checkpoint`` are thin wrappers around these two
functions, which add the hooks' ``on_save_checkpoint`` / ``on_load_checkpoint`` calls.
A checkpoint holds tensors and plain Python data only, so ``torch.load(weights_only=True)``
reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from trainer.checkpoint import check_resumable, load_checkpoint, unloadable
from trainer.distributed import all_gather_object, rank_seed
from trainer.ema import ModelEMA
from trainer.hook import Hook, hook_keys
from trainer.rng import get_rng_state, rank_rng_state, seed_everything
from trainer.state import EngineState

log = logging.getLogger("trainer")


class Resumable(Protocol):
    """What these functions read and restore (``Engine`` is one)."""

    model: nn.Module
    ema: ModelEMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    state: EngineState
    hooks: list[Hook]
    data: Any
    args: dict[str, Any]
    precision: str
    world_size: int
    rank: int
    seed: int

    @property
    def train_loader(self) -> Iterable[Any]: ...


def engine_checkpoint(engine: Resumable) -> dict[str, Any]:
    """Everything needed to resume ``engine`` exactly. Under DDP every rank calls it: it
    gathers each rank's RNG state (``rng_per_rank``)."""
    sampler: Any = getattr(engine.train_loader, "sampler", None)
    rng = get_rng_state()
    ckpt: dict[str, Any] = {
        "version": 1,
        "model": engine.model.state_dict(),
        "ema": engine.ema.state_dict() if engine.ema is not None else None,
        "optimizer": engine.optimizer.state_dict(),
        "scheduler": engine.scheduler.state_dict(),
        "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,
        "state": engine.state.state_dict(),
        "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else None,
        "rng": rng,
        "hooks": {key: _hook_state(h) for key, h in hook_keys(engine.hooks).items()},
        "classes": list(engine.data.classes),
        "args": engine.args,
        "precision": engine.precision,
    }
    if engine.world_size > 1:
        ckpt["rng_per_rank"] = all_gather_object(rng)
    return ckpt


def _hook_state(hook: Hook) -> dict[str, Any]:
    """``hook.state_dict()``, refused (at the first save, not at resume) when a checkpoint
    could not load it back."""
    state = hook.state_dict()
    found = unloadable(state)
    if found is not None:
        where, kind = found
        raise TypeError(
            f"{type(hook).__name__}.state_dict() holds a {kind} at state{where}, which a "
            "checkpoint cannot load back (torch.load(weights_only=True): tensors and plain "
            "Python data only). Return dicts, lists, numbers, strings and tensors, e.g. dict(d), "
            "array.tolist() or torch.as_tensor(array)."
        )
    return state


def restore_engine(
    engine: Resumable, path: str | Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load the checkpoint at ``path`` into ``engine``: model, EMA, optimizer, scheduler,
    scaler, state, sampler and hooks.

    Returns the checkpoint and this rank's RNG state, which the fit restores once its sanity
    check is over (None where the checkpoint was saved by another number of processes: the
    ranks' streams are then reseeded here, and a warning says so).

    Raises:
        CheckpointError: the file cannot be read, or the fit cannot resume it exactly.
    """
    ckpt = load_checkpoint(path)
    check_resumable(ckpt, engine.data.classes, path)
    engine.model.load_state_dict(ckpt["model"])
    if engine.ema is not None and ckpt.get("ema") is not None:
        engine.ema.load_state_dict(ckpt["ema"])
    engine.optimizer.load_state_dict(ckpt["optimizer"])
    engine.scheduler.load_state_dict(ckpt["scheduler"])
    if engine.scaler is not None and ckpt.get("scaler") is not None:
        engine.scaler.load_state_dict(ckpt["scaler"])
    engine.state.load_state_dict(ckpt["state"])
    _say_if_rescheduled(engine, path)
    sampler: Any = getattr(engine.train_loader, "sampler", None)
    if ckpt.get("sampler") is not None and hasattr(sampler, "load_state_dict"):
        sampler.load_state_dict(ckpt["sampler"])
    keys = hook_keys(engine.hooks)
    for key, hook_state in ckpt.get("hooks", {}).items():
        if key in keys:
            keys[key].load_state_dict(hook_state)
    rng = rank_rng_state(ckpt, engine.rank, engine.world_size)
    if rng is None and (engine.world_size > 1 or "rng_per_rank" in ckpt):
        # Saved by another number of processes: the draw and the augmentation (seeded per
        # image) are still exact, but the ranks' own streams cannot continue: new ones.
        log.warning(
            "%s was saved by %d process(es), this run has %d: data order and augmentation "
            "are exact, other randomness (dropout) is reseeded",
            path, len(ckpt.get("rng_per_rank") or [None]), engine.world_size,
        )  # fmt: skip
        seed_everything(rank_seed(engine.seed + len(engine.state.history), engine.rank))
    return ckpt, rng


def _say_if_rescheduled(engine: Any, path: str | Path) -> None:
    """Warn when the fit runs another number of epochs than the run's schedule was laid out
    for: the lr schedule is a function of the step and the fit's length, so it jumps."""
    planned, epochs, done = engine.state.max_epochs, engine.max_epochs, len(engine.state.history)
    if planned in (0, epochs) or done >= epochs:
        return
    sched = engine.scheduler
    now = engine.optimizer.param_groups[0]["lr"]
    change = ""
    if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
        new = sched.base_lrs[0] * sched.lr_lambdas[0](sched.last_epoch)
        change = f": the lr goes from {now:.3g} to {new:.3g} at the next step"
    log.warning(
        "%s trained %d epochs of a %d-epoch learning-rate schedule; this fit runs %d, so the "
        "schedule is laid out over %d epochs from the start%s",
        path, done, planned, epochs, epochs, change,
    )  # fmt: skip


def already_finished(state: EngineState, max_epochs: int, resume: str | Path) -> bool:
    """Whether the resumed run has nothing left to train (all ``max_epochs`` done, or it was
    stopped); if so, a warning says how to train further."""
    if len(state.history) < max_epochs and not state.stop_reason:
        return False
    stopped = f", stopped: {state.stop_reason}" if state.stop_reason else ""
    log.warning(
        "the run in %s already finished (%d of %d epochs%s); nothing to train. "
        "Raise --epochs to train further, or start a new run with another --out.",
        resume, len(state.history), max_epochs, stopped,
    )  # fmt: skip
    return True
