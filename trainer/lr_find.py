"""The learning-rate range test (Smith, 2015), as fastai's and Lightning's LR finders run it.

``lr_find(engine)`` trains from the engine's current weights for up to ``num_steps`` batches
with the engine's model, loss, optimizer, autocast, gradient clipping and fp16 scaler, the
learning rate growing exponentially from ``min_lr`` to ``max_lr``. It records each step's
loss and an exponentially smoothed, bias-corrected copy of it, and stops early once the
smoothed loss exceeds ``diverge`` times its lowest value (or a loss is NaN/inf).

The suggestion is the lr where the smoothed loss falls fastest: the most negative slope of the
smoothed loss against log(lr), leaving out the first ``skip_begin`` points (noisy) and the last
``skip_end`` (divergence); Lightning's rule. It is None when fewer than 3 points remain.

Afterwards everything the test touched is put back: weights and buffers (BatchNorm statistics),
gradients, train/eval mode, the optimizer's and scheduler's state (learning rates included),
the fp16 scaler, the sampler's position, the loader's generator, and the Python, NumPy and
torch random state. No hook runs and ``engine.state`` is not touched, so a fit afterwards is
the fit that would have run without the test.

Under torchrun every rank runs the test on its shard, through DDP (gradients averaged), and the
loss is averaged over ranks before it is smoothed, so all ranks stop at the same step and get
the same suggestion. Each step is the engine's own: ``Engine.to_device``, ``Engine.forward_loss``
(the training forward under autocast, through DDP) and ``trainer.step`` (scaler, clipping, and
a step skipped where the loss or the gradients are not finite).

Example:
    >>> result = lr_find(engine, num_steps=100)
    >>> result.suggestion  # e.g. 0.0021
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.distributed import all_reduce_sum, get_world_size
from trainer.errors import ConfigError, DataError
from trainer.nonfinite import finite_flag
from trainer.rng import get_rng_state, set_rng_state
from trainer.step import backward, clip, optimizer_step, unscale

if TYPE_CHECKING:
    from trainer.engine import Engine


@dataclass
class LRFindResult:
    """What the range test measured.

    Attributes:
        lrs: the learning rate of each step run.
        losses: each step's training loss (averaged over ranks under DDP).
        smoothed: the bias-corrected exponential moving average of ``losses``.
        suggestion: the suggested peak lr, or None when too few points were left.
        diverged: whether the test stopped early because the loss diverged.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    diverged: bool

    def rows(self) -> list[dict[str, float]]:
        """One ``{"step", "lr", "loss", "smoothed_loss"}`` per step, e.g. for a CSV file."""
        return [
            {"step": i, "lr": lr, "loss": loss, "smoothed_loss": smooth}
            for i, (lr, loss, smooth) in enumerate(
                zip(self.lrs, self.losses, self.smoothed, strict=True)
            )
        ]


def lr_find(
    engine: Engine,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
    skip_begin: int = 10,
    skip_end: int = 1,
) -> LRFindResult:
    """Run the LR range test on ``engine`` and put the engine back as it was.

    Args:
        engine: its model, loss, optimizer, autocast, clipping, scaler and training loader.
        min_lr: the first step's learning rate.
        max_lr: the last step's, reached if the loss has not diverged before.
        num_steps: steps (batches) at most; the training loader is cycled if it is shorter.
        beta: smoothing of the loss (exponential moving average, bias-corrected).
        diverge: stop once the smoothed loss is more than this many times its lowest value.
        skip_begin: points left out at the start when suggesting.
        skip_end: points left out at the end when suggesting.

    Raises:
        ConfigError: a bound or count that cannot work.
    """
    if not 0 < min_lr < max_lr or not math.isfinite(max_lr):
        raise ConfigError(f"the LR range test needs 0 < min_lr < max_lr, got {min_lr}, {max_lr}.")
    if num_steps < 2:
        raise ConfigError(f"the LR range test needs at least 2 steps, got {num_steps}.")
    if not 0 <= beta < 1 or diverge <= 1:
        raise ConfigError(
            f"the LR range test needs 0 <= beta < 1 and diverge > 1, got {beta}, {diverge}."
        )
    saved = _snapshot(engine)
    try:
        lrs, losses, smoothed, diverged = _ramp(engine, min_lr, max_lr, num_steps, beta, diverge)
    finally:
        _restore(engine, saved)
    suggestion = suggest_lr(lrs, smoothed, skip_begin=skip_begin, skip_end=skip_end)
    return LRFindResult(lrs, losses, smoothed, suggestion, diverged)


def suggest_lr(
    lrs: list[float], smoothed: list[float], *, skip_begin: int = 10, skip_end: int = 1
) -> float | None:
    """The lr of the steepest descent of ``smoothed`` against log(lr), or None.

    The first ``skip_begin`` and last ``skip_end`` points are left out, and so are non-finite
    losses; fewer than 3 points left gives None.
    """
    end = len(lrs) - skip_end
    lr = np.asarray(lrs[skip_begin:end], dtype=np.float64)
    loss = np.asarray(smoothed[skip_begin:end], dtype=np.float64)
    keep = np.isfinite(loss)
    lr, loss = lr[keep], loss[keep]
    if len(loss) < 3:
        return None
    slope = np.gradient(loss, np.log(lr))
    return float(lr[int(np.argmin(slope))])


def _ramp(
    engine: Engine, min_lr: float, max_lr: float, num_steps: int, beta: float, diverge: float
) -> tuple[list[float], list[float], list[float], bool]:
    opt, scaler = engine.optimizer, engine.scaler
    # Groups keep their ratios to the largest group lr (equal for the default AdamW).
    top = max(g["lr"] for g in opt.param_groups) or 1.0
    ratios = [g["lr"] / top for g in opt.param_groups]
    gamma = (max_lr / min_lr) ** (1 / (num_steps - 1))
    world = get_world_size()
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    engine.model.train()
    opt.zero_grad(set_to_none=True)
    batches = _cycle(engine.train_loader)
    for step in range(num_steps):
        lr = min_lr * gamma**step
        for group, ratio in zip(opt.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        x, y = engine.to_device(next(batches))
        _, loss = engine.forward_loss(x, y)
        backward(loss, scaler)
        unscale(opt, scaler)
        finite = clip(engine.model, engine.grad_clip, finite_flag(loss.detach()))
        optimizer_step(opt, scaler, finite)
        opt.zero_grad(set_to_none=True)
        # One host read per step: the test decides after each step whether to go on.
        value = all_reduce_sum(loss.detach().float().reshape(1)).item() / world
        average = beta * average + (1 - beta) * value
        smooth = average / (1 - beta ** (step + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(smooth)
        if not math.isfinite(smooth) or (step > 0 and smooth > diverge * best):
            return lrs, losses, smoothed, True
        best = min(best, smooth)
    return lrs, losses, smoothed, False


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (the same draw each time)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise DataError("the LR range test found no training batches; add training images.")


def _snapshot(engine: Engine) -> dict[str, Any]:
    model = engine.model
    loader: Any = engine.train_loader
    sampler: Any = getattr(loader, "sampler", None)
    generator = getattr(loader, "generator", None)
    params = list(model.parameters())
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.detach().clone() for p in params],
        "training": {m: m.training for m in model.modules()},
        "optimizer": copy.deepcopy(engine.optimizer.state_dict()),
        "scheduler": copy.deepcopy(engine.scheduler.state_dict()),
        "scaler": None if engine.scaler is None else copy.deepcopy(engine.scaler.state_dict()),
        "sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else None,
        "generator": None if generator is None else generator.get_state(),
        "rng": get_rng_state(),
    }


def _restore(engine: Engine, saved: dict[str, Any]) -> None:
    model = engine.model
    model.load_state_dict(saved["model"])  # copies in place: the optimizer keeps its tensors
    for p, grad in zip(model.parameters(), saved["grads"], strict=True):
        p.grad = grad
    for m, training in saved["training"].items():
        m.training = training
    engine.optimizer.load_state_dict(saved["optimizer"])
    engine.scheduler.load_state_dict(saved["scheduler"])
    if engine.scaler is not None:
        engine.scaler.load_state_dict(saved["scaler"])
    loader: Any = engine.train_loader
    if saved["sampler"] is not None:
        loader.sampler.load_state_dict(saved["sampler"])
    if saved["generator"] is not None:
        loader.generator.set_state(saved["generator"])
    set_rng_state(saved["rng"])
