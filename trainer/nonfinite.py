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
        self._skipped = torch.zeros((), dtype=torch.long, device=device)
        self._in_a_row = torch.zeros((), dtype=torch.long, device=device)
        # Running mean, variance and batch count of every BatchNorm (and tracking InstanceNorm).
        self._stats = [
            b
            for m in (model.modules() if model is not None else ())
            if isinstance(m, _NormBase)
            for b in m.buffers(recurse=False)
        ]
        self._saved = [b.detach().clone() for b in self._stats]
        self._first_micro_batch = True

    def before_forward(self) -> None:
        """Keep the normalisation statistics, before the first forward pass of a step."""
        if self._first_micro_batch and self._stats:
            torch._foreach_copy_(self._saved, self._stats)
        self._first_micro_batch = False

    @torch.no_grad()
    def restore(self, applied: torch.Tensor) -> None:
        """Put the statistics kept by ``before_forward`` back unless ``applied`` (a device bool)."""
        for buf, saved in zip(self._stats, self._saved, strict=True):
            torch.where(applied, buf, saved, out=buf)

    def observe(self, loss: torch.Tensor) -> None:
        """Fold a micro-batch's loss into ``finite``."""
        self.finite.logical_and_(torch.isfinite(loss.detach()))

    def stepped(self, applied: torch.Tensor, step: int, epoch: int) -> None:
        """Count the optimizer step just taken (``applied``: whether it was not skipped)."""
        skip = (~applied).long()
        self._skipped += skip
        self._in_a_row.mul_(skip).add_(skip)  # (n + 1) if skipped else 0
        self.finite.fill_(True)
        self._first_micro_batch = True
        if step % CHECK_EVERY == 0:
            self.check(step, epoch)

    def check(self, step: int, epoch: int) -> int:
        """Read the counters (a host sync); raise once ``max_in_a_row`` steps in a row were
        skipped. Returns the steps skipped since ``reset``."""
        skipped, in_a_row = torch.stack([self._skipped, self._in_a_row]).tolist()
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
