"""What the loops count on the device, batch by batch, and read once per epoch.

No host sync per batch: the sums stay on the device until ``compute``, which all-reduces
them over ranks (one collective) and reads them once.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer.distributed import all_reduce_sum


def is_better(value: float | None, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta`` under ``mode``.

    ``mode`` is "max" or "min". None and NaN never improve; anything improves on None.

    Example:
        >>> is_better(0.91, 0.90, "max"), is_better(0.5, 0.4, "min")
        (True, False)
    """
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return (value - best if mode == "max" else best - value) > min_delta


def confusion_counter(num_classes: int, device: torch.device) -> Any:
    """A torchmetrics ``MulticlassConfusionMatrix`` for ``EvalTally.compute``, without its own
    sync: the engine sums all its validation counts in one all-reduce."""
    # Imported here: torchmetrics pulls in matplotlib, too slow for `import trainer`.
    from torchmetrics.classification import MulticlassConfusionMatrix

    counter = MulticlassConfusionMatrix(num_classes, validate_args=False, sync_on_compute=False)
    return counter.to(device)


class TrainTally:
    """Loss and accuracy over an epoch's batches whose loss was finite.

    A batch with a NaN or infinite loss (its optimizer step was skipped) counts in neither.
    """

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.counted = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0
        self.device = device

    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.shape[0]
        finite = torch.isfinite(loss)
        self.loss.add_(torch.where(finite, loss, 0.0), alpha=n)
        self.correct += ((logits.argmax(1) == targets) & finite).sum()
        self.counted += finite * n
        self.seen += n

    def compute(self) -> tuple[float, float, float]:
        """Over all ranks: mean loss and accuracy (NaN when no batch was finite), images seen."""
        counts = [self.loss, self.correct, self.counted, torch.tensor(self.seen, device=self.device)]
        totals = all_reduce_sum(torch.stack([c.double() for c in counts]))
        loss, correct, counted, seen = totals.tolist()
        if not counted:
            return math.nan, math.nan, seen
        return loss / counted, correct / counted, seen


class EvalTally:
    """Loss, top-5 hits and the confusion matrix of a validation or test pass.

    Predictions gather on the device; the confusion matrix (whose bincount would make the host
    wait for the GPU on every batch) is built once, in ``compute``.
    """

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes, self.device = num_classes, device
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.loss = torch.zeros((), device=device)
        self.top5 = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss * targets.shape[0]
        self.seen += targets.shape[0]
        self.preds.append(logits.argmax(1))
        self.targets.append(targets)
        if self.num_classes >= 5:
            self.top5 += (logits.topk(5, dim=1).indices == targets[:, None]).any(1).sum()

    def compute(self, confmat: Any) -> tuple[torch.Tensor, float, float, float]:
        """Summed over ranks, one all-reduce: the confusion matrix (CPU int64, rows = true
        class), the loss sum, top-5 hits and images seen (float64 holds counts exactly up to
        2**53). ``confmat`` is a torchmetrics ``MulticlassConfusionMatrix`` to count with.
        """
        n = self.num_classes
        local = torch.zeros(n * n, dtype=torch.float64, device=self.device)
        if self.preds:  # an empty shard under DDP still joins the all-reduce
            confmat.reset()
            confmat.update(torch.cat(self.preds), torch.cat(self.targets))
            local = confmat.compute().flatten().double()
        sums = [self.loss, self.top5, torch.tensor(self.seen, device=self.device)]
        totals = all_reduce_sum(torch.cat([local] + [t.double()[None] for t in sums])).cpu()
        loss, top5, seen = totals[n * n :].tolist()
        return totals[: n * n].view(n, n).long(), loss, top5, seen
