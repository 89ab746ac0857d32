"""What the loops count on the device, batch by batch, and read once per epoch.

No host sync per batch: the sums stay on the device until ``compute``, which all-reduces
them over ranks (one collective) and reads them once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from trainer.distributed import all_reduce_sum
from trainer.errors import ConfigError

if TYPE_CHECKING:
    from trainer.state import EngineState

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def monitor_mode(metric: str) -> str:
    """ "min" for the metrics where lower is better (losses, calibration error), else "max"."""
    return "min" if metric.endswith(("loss", "ece")) else "max"


def track_best(state: EngineState, monitor: str, mode: str, strict: bool = False) -> dict[str, float]:
    """The row of the validation that just ran (``epoch``, ``step`` and ``state.metrics``);
    sets ``state.is_best`` by ``monitor`` under ``mode`` and, when it is, ``state.best``.

    Raises:
        ConfigError: with ``strict`` (a monitor the user chose), a validation ran and the row
            has no ``monitor`` (without validation images a val/ metric is simply absent).
    """
    row = {"epoch": float(state.epoch), "step": float(state.step), **state.metrics}
    if strict and monitor not in row and any(k.startswith("val/") for k in row):
        raise ConfigError(
            f"--monitor {monitor}: this run has no such metric (a typo, or one its data does "
            f"not give); it has {', '.join(sorted(state.metrics))}. Pass one of those."
        )
    best = None if state.best is None else state.best.get(monitor)
    state.is_best = is_better(row.get(monitor), best, mode)
    if state.is_best:
        state.best = dict(row)
        if state.label_metrics is not None:  # multi-label: the best epoch's tuned thresholds
            state.thresholds = list(state.label_metrics["threshold"])
    return row


def confusion_counter(num_classes: int, device: torch.device) -> ConfusionCounter:
    """The counter ``EvalTally.compute`` builds the confusion matrix with (see
    ``ConfusionCounter``)."""
    return ConfusionCounter(num_classes, device)


class ConfusionCounter:
    """A torchmetrics ``MulticlassConfusionMatrix`` without its own sync (the engine sums all
    its validation counts in one all-reduce), made when it first counts.

    Importing torchmetrics takes a second or more (it imports scipy and matplotlib): the
    first validation needs it, building the engine and the first training step do not.
    """

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes, self.device = num_classes, device
        self._metric: Any = None

    def _counter(self) -> Any:
        if self._metric is None:
            from torchmetrics.classification import MulticlassConfusionMatrix

            metric = MulticlassConfusionMatrix(
                self.num_classes, validate_args=False, sync_on_compute=False
            )
            self._metric = metric.to(self.device)
        return self._metric

    def reset(self) -> None:
        self._counter().reset()

    def update(self, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self._counter().update(preds, targets)

    def compute(self) -> torch.Tensor:
        """The ``(C, C)`` counts since the last ``reset``, rows = true class."""
        return self._counter().compute()


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

    def update(
        self,
        loss: torch.Tensor,
        logits: torch.Tensor,
        targets: torch.Tensor,
        finite: torch.Tensor | None = None,
    ) -> None:
        """Add a batch; ``finite``: whether its loss is finite (a device bool), if known."""
        n = targets.shape[0]
        ok = torch.isfinite(loss) if finite is None else finite
        self.loss.add_(torch.where(ok, loss, 0.0), alpha=n)
        self.correct.add_(self.hits(logits, targets) * ok)
        self.counted.add_(ok, alpha=n)
        self.seen += n

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """A batch's right answers, counted for ``train/acc``: the top-1 hits."""
        return (logits.argmax(1) == targets).sum()

    def compute(self) -> tuple[float, float, float]:
        """Over all ranks: mean loss and accuracy (NaN when no batch was finite), images seen."""
        counts = [
            self.loss,
            self.correct,
            self.counted,
            torch.tensor(self.seen, device=self.device),
        ]
        totals = all_reduce_sum(torch.stack([c.double() for c in counts]))
        loss, correct, counted, seen = totals.tolist()
        if not counted:
            return math.nan, math.nan, seen
        return loss / counted, correct / counted, seen


# Confidence bins of the expected calibration error, torchmetrics' default.
CALIBRATION_BINS = 15


class EvalCounts(NamedTuple):
    """A validation or test pass's counts, summed over ranks (``EvalTally.compute``).

    Attributes:
        confusion: CPU int64 ``(C, C)``, rows = true class.
        loss: the sum of the per-image losses.
        top5: images whose class is among their five highest logits.
        seen: images.
        calibration: CPU float64 ``(3, CALIBRATION_BINS + 1)``: per confidence bin the image
            count, the sum of top-1 confidences and the sum of top-1 hits. Bins are
            torchmetrics' (``bucketize`` on ``linspace(0, 1, 16)``): the extra last one holds
            confidences of exactly 1.
    """

    confusion: torch.Tensor
    loss: float
    top5: float
    seen: float
    calibration: torch.Tensor

    def summary(self, prefix: str) -> dict[str, float]:
        """The scalar metrics of the pass, ``{prefix}/...``: loss, acc, acc_top5 (5+ classes),
        macro_f1, balanced_acc and ece; empty when the pass saw no image.

        ``macro_f1`` averages F1 over the classes that occur (true or predicted), as
        torchmetrics' ``MulticlassF1Score(average="macro")``; ``balanced_acc`` averages recall
        over the classes with images, as scikit-learn's ``balanced_accuracy_score``; ``ece`` is
        the expected calibration error of the top-1 confidence (``MulticlassCalibrationError``
        with 15 bins): the images' mean gap between confidence and accuracy, bin by bin.
        """
        seen, cm = self.seen, self.confusion
        if seen == 0:
            return {}
        per_class = class_metrics(cm)
        occurs = (per_class["support"] + cm.sum(0)) > 0
        present = per_class["support"] > 0
        _, confidence, hits = self.calibration
        metrics = {
            f"{prefix}/loss": self.loss / seen,
            f"{prefix}/acc": float(cm.diag().sum()) / seen,
        }
        if len(cm) >= 5:
            metrics[f"{prefix}/acc_top5"] = self.top5 / seen
        metrics[f"{prefix}/macro_f1"] = float(per_class["f1"][occurs].mean())
        metrics[f"{prefix}/balanced_acc"] = float(per_class["recall"][present].mean())
        # sum over bins of |acc_b - conf_b| * n_b / N, with acc_b * n_b = hits_b
        metrics[f"{prefix}/ece"] = float((hits - confidence).abs().sum()) / seen
        return metrics

    def record(
        self, state: EngineState, prefix: str, classes: Sequence[str], seconds: float
    ) -> dict[str, float]:
        """Put the pass into ``state``: ``summary(prefix)`` and ``{prefix}/time`` into
        ``metrics``, and ``per_class_acc``, ``confusion_matrix``, ``calibration``. Returns the
        metrics; nothing is recorded (and ``{}`` returned) for a pass that saw no image."""
        metrics = self.summary(prefix)
        if not metrics:
            return {}
        metrics[f"{prefix}/time"] = seconds
        state.per_class_acc = self.per_class_accuracy(classes)
        state.confusion_matrix, state.calibration = self.confusion, self.calibration
        state.metrics.update(metrics)
        return metrics

    def per_class_accuracy(self, classes: Sequence[str]) -> dict[str, float | None]:
        """Accuracy per class name (its images predicted right); None for a class with none."""
        hits, support = self.confusion.diag().tolist(), self.confusion.sum(1).tolist()
        return {c: (hits[i] / support[i] if support[i] else None) for i, c in enumerate(classes)}


class EvalTally:
    """Loss, top-5 hits, confidence bins and the confusion matrix of a validation or test pass.

    Predictions gather on the device; the confusion matrix (whose bincount would make the host
    wait for the GPU on every batch) is built once, in ``compute``. The confidence histogram
    (for the calibration error) adds up on the device, no host read, with a one-hot matmul
    rather than ``index_add_``, whose CUDA atomics would sum in a different order each run.
    """

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.num_classes, self.device = num_classes, device
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.loss = torch.zeros((), device=device)
        self.top5 = torch.zeros((), device=device, dtype=torch.long)
        self.bins = torch.zeros(3, CALIBRATION_BINS + 1, dtype=torch.float64, device=device)
        self._edges = torch.linspace(0, 1, CALIBRATION_BINS + 1, device=device)
        self._slots = torch.arange(CALIBRATION_BINS + 1, device=device)
        self.seen = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss * targets.shape[0]
        self.seen += targets.shape[0]
        self.preds.append(logits.argmax(1))
        self.targets.append(targets)
        if self.num_classes >= 5:
            self.top5 += (logits.topk(5, dim=1).indices == targets[:, None]).any(1).sum()
        # torchmetrics' confidences and binning, so val/ece equals MulticlassCalibrationError's.
        confidence, pred = logits.float().softmax(1).max(1)
        slot = torch.bucketize(confidence, self._edges, right=True) - 1
        hits = (pred == targets).to(confidence.dtype)
        rows = torch.stack([torch.ones_like(confidence), confidence, hits]).double()
        self.bins += rows @ (slot[:, None] == self._slots).double()

    def compute(self, confmat: ConfusionCounter) -> EvalCounts:
        """Summed over ranks, one all-reduce, read once (float64 holds counts exactly up to
        2**53). ``confmat`` is the ``ConfusionCounter`` to count with.
        """
        n = self.num_classes
        local = torch.zeros(n * n, dtype=torch.float64, device=self.device)
        if self.preds:  # an empty shard under DDP still joins the all-reduce
            confmat.reset()
            confmat.update(torch.cat(self.preds), torch.cat(self.targets))
            local = confmat.compute().flatten().double()
        sums = [self.loss, self.top5, torch.tensor(self.seen, device=self.device)]
        parts = [local, self.bins.flatten()] + [t.double()[None] for t in sums]
        totals = all_reduce_sum(torch.cat(parts)).cpu()
        loss, top5, seen = totals[-3:].tolist()
        bins = totals[n * n : -3].view(3, CALIBRATION_BINS + 1)
        return EvalCounts(totals[: n * n].view(n, n).long(), loss, top5, seen, bins)


class EvalScore:
    """Scores a validation or test pass as ``Engine.run_eval`` runs it, and records it.

    ``score`` adds a batch to an ``EvalTally`` (its loss computed with ``loss_fn``) and returns
    the outputs the batch-end hooks get; ``end``, after the last batch, sums the counts over
    ranks (one all-reduce) and records the metrics in ``state`` (``EvalCounts.record``), so
    the epoch-end hooks read them. A sanity check (phase "sanity") records nothing.
    ``tools/evaluate.py`` scores its models with this class too, so it reports the numbers the
    engine does.

    Args:
        state: where the metrics go.
        phase: "sanity", "val" or "test"; the metrics are ``val/...`` or ``test/...``.
        classes: class names by index.
        loss_fn: the loss of a batch, ``loss_fn(logits, targets)``.
        device: where the counts add up.
        confmat: the confusion counter to reuse; default a new one.

    Attributes:
        counts: the pass's ``EvalCounts`` once ``end`` ran (None before, and for a sanity check).
        metrics: the recorded metrics once ``end`` ran (``{}`` when the pass saw no image).
    """

    def __init__(
        self,
        state: EngineState,
        phase: str,
        classes: Sequence[str],
        loss_fn: LossFn,
        device: torch.device,
        confmat: ConfusionCounter | None = None,
    ) -> None:
        self.state, self.phase, self.classes, self.loss_fn = state, phase, classes, loss_fn
        self.tally = EvalTally(len(classes), device)
        self.confmat = confmat or ConfusionCounter(len(classes), device)
        self.counts: EvalCounts | None = None
        self.metrics: dict[str, float] = {}
        self.start = time.perf_counter()

    def score(self, logits: torch.Tensor, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add a batch ``(images, targets)``; returns ``{"loss", "logits", "targets"}``."""
        targets = batch[1]
        loss = self.loss_fn(logits, targets)
        self.tally.update(loss, logits, targets)
        return {"loss": loss, "logits": logits, "targets": targets}

    def end(self) -> None:
        """Reduce the counts over ranks and record them in ``state`` (not for a sanity check)."""
        if self.phase == "sanity":
            return
        self.counts = self.tally.compute(self.confmat)
        prefix = "test" if self.phase == "test" else "val"
        seconds = time.perf_counter() - self.start
        self.metrics = self.counts.record(self.state, prefix, self.classes, seconds)


def keep_top(
    top: tuple[torch.Tensor, ...] | None, new: tuple[torch.Tensor, ...], k: int
) -> tuple[torch.Tensor, ...]:
    """The ``k`` rows of ``top`` and ``new`` together (tuples of aligned 1-D tensors, ``top``
    None at first) with the largest first tensor, largest first; on the device, no host read.
    A running top-k over a validation's batches."""
    if top is not None:
        new = tuple(torch.cat([old, cur]) for old, cur in zip(top, new, strict=True))
    _, keep = torch.topk(new[0], min(k, len(new[0])))
    return tuple(t[keep] for t in new)


def class_metrics(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-class accuracy, precision, recall, F1 and support from a confusion matrix.

    Everything follows from the counts (rows = true class), so no second pass over the
    predictions. A ratio whose denominator is 0 is 0, as in torchmetrics. ``accuracy`` is
    torchmetrics' ``MulticlassAccuracy(average=None)``: the share of the class's images that
    were predicted as it, the same number as recall.

    Returns:
        float64 tensors of shape ``(C,)`` keyed "accuracy", "precision", "recall", "f1",
        "support" (images of the class).
    """
    cm = confusion.double()
    tp, support, predicted = cm.diag(), cm.sum(1), cm.sum(0)
    recall = _safe_div(tp, support)
    precision = _safe_div(tp, predicted)
    f1 = _safe_div(2 * tp, support + predicted)
    return {"accuracy": recall, "precision": precision, "recall": recall, "f1": f1,
            "support": support}  # fmt: skip


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))
