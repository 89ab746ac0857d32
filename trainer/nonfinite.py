"""NonFiniteGuard: skip optimizer steps whose loss is NaN or infinite, without a host sync."""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from trainer.errors import NonFiniteLossError
from trainer.state import EngineState

log = logging.getLogger("trainer")

# Optimizer steps between host reads of the skip counters (one tiny sync each).
CHECK_EVERY = 50


class NonFiniteGuard:
    """Tracks, on the device, whether each optimizer step may apply, and how many did not.

    ``finite`` is a device bool: whether every micro-batch of the current optimizer step had
    a finite loss. The engine hands it (or a stricter version) to the optimizer, the scaler
    and EMA, which skip the update on the device; ``stepped`` counts the skips, and every
    ``CHECK_EVERY`` steps and at the epoch's end the counters are read once.

    A NaN in the forward pass reaches the BatchNorm running statistics before the loss is
    seen, and would then spoil every later validation. So ``before_forward`` keeps a copy of
    the model's normalisation buffers at the start of each optimizer step, and ``restore``
    puts them back with ``torch.where`` on the device where the step is skipped: a skipped
    step leaves the weights, the buffers and (through ``ModelEMA.update``'s ``apply``) the
    average as they were.

    Args:
        device: where the counters live.
        max_in_a_row: this many skipped steps in a row raise ``NonFiniteLossError``.
        model: the trained model (unwrapped), whose normalisation buffers are guarded.
    """

    def __init__(
        self, device: torch.device, max_in_a_row: int, model: nn.Module | None = None
    ) -> None:
        self.max_in_a_row = max_in_a_row
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        # Float counters (exact up to 2**24 steps), so that ``stepped`` adds the optimizer's
        # found_inf flag as it is.
        self._skipped = torch.zeros((), device=device)
        self._in_a_row = torch.zeros((), device=device)
        # Running mean, variance and batch count of every BatchNorm (and tracking InstanceNorm),
        # in one group per dtype: saving and restoring them is then a few kernels per step,
        # not one per buffer (resnet18 has 60).
        stats = [
            b
            for m in (model.modules() if model is not None else ())
            if isinstance(m, _NormBase)
            for b in m.buffers(recurse=False)
        ]
        self._groups = [_StatsGroup([b for b in stats if b.dtype == d]) for d in _dtypes(stats)]
        self._first_micro_batch = True

    def before_forward(self) -> None:
        """Keep the normalisation statistics, before the first forward pass of a step."""
        if self._first_micro_batch:
            for group in self._groups:
                group.save()

    @torch.no_grad()
    def restore(self, applied: torch.Tensor) -> None:
        """Put the statistics kept by ``before_forward`` back unless ``applied`` (a device bool)."""
        for group in self._groups:
            group.restore(applied)

    def observe(self, finite: torch.Tensor) -> None:
        """Fold a micro-batch's ``finite_flag(loss)`` into ``finite``."""
        if self._first_micro_batch:
            self.finite.copy_(finite)
        else:
            self.finite.logical_and_(finite)
        self._first_micro_batch = False

    def stepped(self, skipped: torch.Tensor, step: int, epoch: int) -> None:
        """Count the optimizer step just taken; ``skipped`` is a float device 0-d tensor, 1.0
        where the step was skipped (the fused optimizer's ``found_inf``)."""
        self._skipped += skipped
        self._in_a_row.mul_(skipped).add_(skipped)  # (n + 1) if skipped else 0
        self._first_micro_batch = True
        if step % CHECK_EVERY == 0:
            self.check(step, epoch)

    def check(self, step: int, epoch: int) -> int:
        """Read the counters (a host sync); raise once ``max_in_a_row`` steps in a row were
        skipped. Returns the steps skipped since ``reset``."""
        skipped, in_a_row = (int(v) for v in torch.stack([self._skipped, self._in_a_row]).tolist())
        if in_a_row >= self.max_in_a_row:
            raise NonFiniteLossError(
                f"the loss was NaN or infinite for {in_a_row} optimizer steps in a row (epoch "
                f"{epoch + 1}, step {step}); training stopped. Try a lower --lr, --grad-clip "
                "1.0, or --precision bf16-mixed / 32 instead of 16-mixed, and check the data. "
                "Checkpoints of finished epochs are kept."
            )
        return int(skipped)

    def end_epoch(self, state: EngineState) -> None:
        """Read the counters once; record and log this epoch's skipped steps, then count anew
        (a run of skips in a row carries on into the next epoch)."""
        skipped = self.check(state.step, state.epoch)
        if skipped:
            state.metrics["train/skipped_steps"] = skipped
            log.warning(
                "epoch %d: skipped %d optimizer step(s) with a NaN or infinite loss",
                state.epoch + 1, skipped,
            )  # fmt: skip
        self._skipped.zero_()


def finite_flag(t: torch.Tensor) -> torch.Tensor:
    """Whether a 0-d tensor is finite, as a device bool: ``t - t == 0`` (inf - inf and NaN are
    NaN). Two kernels where ``torch.isfinite`` launches four, on every training step."""
    return (t - t) == 0


def _dtypes(tensors: list[torch.Tensor]) -> list[torch.dtype]:
    return list(dict.fromkeys(t.dtype for t in tensors))


class _StatsGroup:
    """Buffers of one dtype, saved into and restored from one flat tensor: a concatenation
    (one kernel), a ``where`` and a multi-tensor copy, whatever the number of buffers."""

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        self.views = [b.view(-1) for b in buffers]  # 0-d num_batches_tracked as 1 element
        self.saved = torch.cat(self.views)
        self._current = torch.empty_like(self.saved)
        self._parts = list(self._current.split([v.numel() for v in self.views]))

    def save(self) -> None:
        torch.cat(self.views, out=self.saved)

    def restore(self, applied: torch.Tensor) -> None:
        torch.cat(self.views, out=self._current)
        torch.where(applied, self._current, self.saved, out=self._current)
        torch._foreach_copy_(self.views, self._parts)
