"""NonFiniteGuard: skip optimizer steps whose loss is NaN or infinite, without a host sync."""

from __future__ import annotations

import torch

from trainer.errors import NonFiniteLossError

# Optimizer steps between host reads of the skip counters (one tiny sync each).
CHECK_EVERY = 50


class NonFiniteGuard:
    """Tracks, on the device, whether each optimizer step may apply, and how many did not.

    ``finite`` is a device bool: whether every micro-batch of the current optimizer step had
    a finite loss. The engine hands it (or a stricter version) to the optimizer, the scaler
    and EMA, which skip the update on the device; ``stepped`` counts the skips, and every
    ``CHECK_EVERY`` steps and at the epoch's end the counters are read once.

    Args:
        device: where the counters live.
        max_in_a_row: this many skipped steps in a row raise ``NonFiniteLossError``.
    """

    def __init__(self, device: torch.device, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self._skipped = torch.zeros((), dtype=torch.long, device=device)
        self._in_a_row = torch.zeros((), dtype=torch.long, device=device)

    def observe(self, loss: torch.Tensor) -> None:
        """Fold a micro-batch's loss into ``finite``."""
        self.finite.logical_and_(torch.isfinite(loss.detach()))

    def stepped(self, applied: torch.Tensor, step: int, epoch: int) -> None:
        """Count the optimizer step just taken (``applied``: whether it was not skipped)."""
        skip = (~applied).long()
        self._skipped += skip
        self._in_a_row.mul_(skip).add_(skip)  # (n + 1) if skipped else 0
        self.finite.fill_(True)
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

    def reset(self) -> None:
        """Start counting skips anew (at each epoch's end); a run in a row carries on."""
        self._skipped.zero_()
