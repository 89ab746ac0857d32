"""Multi-label classification: each image carries a set of labels, possibly empty.

The model's ``C`` logits are ``C`` independent yes/no decisions: sigmoid probabilities, binary
cross-entropy by default (``trainer.losses``), a class predicted where its probability reaches
its threshold. The data side is ``trainer.data.label_sets``; this module is the engine's side,
the ``MultiLabelTask`` that ``trainer.tasks.task_of`` picks for multi-label data.

What a validation (or test) pass records, counted on the device and read once:

- ``val/mAP``: the macro average precision, over the classes with a positive image
  (scikit-learn's ``average_precision_score``, ties included), the task's default monitor;
- ``val/micro_f1``, ``val/macro_f1`` at the thresholds in force (``state.thresholds``, else
  0.5), the macro mean over the classes that occur (true or predicted);
- ``val/exact_match`` (images whose predicted set is their true set) and ``val/hamming_loss``
  (the share of wrong yes/no decisions);
- ``val/macro_f1_tuned``: macro F1 at the thresholds tuned on this very pass (optimistic);
- ``state.label_metrics``: per class AP, precision, recall, F1, support, the threshold that
  maximises the class's F1 on the pass (0.5 for a class without positives) and that F1, the
  2x2 counts at the thresholds in force (tp, fp, fn, tn), and the class's precision-recall
  curve on a grid of 101 thresholds.

At the best epoch (``trainer.metrics.track_best``) the tuned thresholds become
``state.thresholds``, which ``labels_mapping.json``, the checkpoints and the export carry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer.distributed import all_gather_object, all_reduce_sum, get_world_size
from trainer.losses import BinaryCrossEntropy
from trainer.metrics import ConfusionCounter, LossFn, TrainTally
from trainer.task import ClassificationTask, Scorer

if TYPE_CHECKING:
    from trainer.state import EngineState

DEFAULT_THRESHOLD = 0.5
PR_POINTS = 101  # thresholds 0, 0.01, ..., 1 of the stored precision-recall curves
# Per-class results, in the order they are packed for the one host read.
PER_CLASS = ("ap", "precision", "recall", "f1", "support", "threshold", "f1_tuned",
             "tp", "fp", "fn", "tn")  # fmt: skip


class MultiLabelTask(ClassificationTask):
    """Multi-label classification: sigmoid, binary cross-entropy, ``val/mAP``."""

    name = "multilabel"
    default_monitor = "val/mAP"

    def loss(self, label_smoothing: float) -> nn.Module:
        return BinaryCrossEntropy(label_smoothing=label_smoothing)

    def train_tally(self, device: torch.device) -> TrainTally:
        return LabelTally(device)

    def scorer(
        self,
        state: EngineState,
        phase: str,
        classes: Sequence[str],
        loss_fn: LossFn,
        device: torch.device,
        confmat: ConfusionCounter | None = None,
    ) -> Scorer:
        return MultiLabelScore(state, phase, classes, loss_fn, device)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def monitor(self, monitor: str | None) -> str:
        if monitor in (None, ClassificationTask.default_monitor):
            return self.default_monitor
        return monitor


class LabelTally(TrainTally):
    """``TrainTally`` whose ``train/acc`` is the label accuracy: the share of right yes/no
    decisions (logit > 0 against target > 0.5), i.e. one minus the Hamming loss."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.correct = torch.zeros((), device=device)  # sums of per-image shares: float

    def hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each image's share of right yes/no decisions, summed over the batch."""
        return ((logits > 0) == (targets > 0.5)).float().mean(1).sum()


def _ranked(probs: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each class's images by falling probability: the sorted probabilities, positives (0/1),
    running true positives, and for each rank the last rank of its tie group."""
    scores, order = probs.sort(0, descending=True)
    pos = positive.gather(0, order).double()
    n = len(scores)
    rank = torch.arange(n, device=probs.device)[:, None].expand_as(scores)
    last = torch.ones_like(scores[:1], dtype=torch.bool)
    is_end = torch.cat([scores[1:] != scores[:-1], last])
    end = torch.where(is_end, rank, n - 1).flip(0).cummin(0).values.flip(0)
    return scores, pos, pos.cumsum(0), end


def average_precision(probs: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per-class average precision ``(C,)`` of ``probs`` ``(N, C)`` against the bool
    ``positive``, as scikit-learn computes it (ties share a threshold); NaN for a class with
    no positive. On the device, no host read."""
    _, pos, tp, end = _ranked(probs, positive)
    precision = tp.gather(0, end) / (end + 1)
    return (pos * precision).sum(0) / pos.sum(0)


def tuned_thresholds(probs: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per class, the threshold that maximises F1 on these images and that F1: half way
    between the lowest probability predicted positive and the next lower one. A class with no
    positive gets ``DEFAULT_THRESHOLD`` (and F1 0). On the device, no host read."""
    scores, pos, tp, end = _ranked(probs, positive)
    n_pos = pos.sum(0)
    rank = torch.arange(len(scores), device=probs.device)[:, None]
    f1 = torch.where(end == rank, 2 * tp / (rank + 1 + n_pos), -1.0)
    best_f1, best = f1.max(0)
    below = torch.cat([scores, torch.zeros_like(scores[:1])])
    cut = (below.gather(0, best[None]) + below.gather(0, best[None] + 1)).squeeze(0) / 2
    has = n_pos > 0
    default = torch.full_like(cut, DEFAULT_THRESHOLD)
    return torch.where(has, cut, default), torch.where(has, best_f1, 0.0)


def pr_curves(probs: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per class precision and recall ``(C, PR_POINTS)`` at thresholds 0, 0.01, ..., 1
    (predicted where the probability reaches the threshold)."""
    scores, _, tp, _ = _ranked(probs, positive)
    grid = torch.linspace(0, 1, PR_POINTS, device=probs.device, dtype=scores.dtype)
    lowered = (-scores).T.contiguous()  # ascending per class, for searchsorted
    count = torch.searchsorted(lowered, (-grid).expand(len(lowered), -1).contiguous(), right=True)
    tp_at = torch.cat([torch.zeros_like(tp[:1]), tp]).T.gather(1, count)
    precision = torch.where(count > 0, tp_at / count.clamp(min=1), 1.0)
    recall = tp_at / positive.sum(0).clamp(min=1)[:, None]
    return precision, recall


def label_results(
    probs: torch.Tensor, positive: torch.Tensor, thresholds: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Everything ``MultiLabelScore`` records, as device tensors: the per-class ``PER_CLASS``
    ``(C,)``, the counts ``tp``/``fp``/``fn`` ``(C,)``, ``exact`` (images predicted exactly)
    and ``wrong`` (wrong decisions), and ``pr_precision``/``pr_recall`` ``(C, PR_POINTS)``."""
    pred = probs >= thresholds
    tp, fp = (pred & positive).sum(0).double(), (pred & ~positive).sum(0).double()
    fn = (~pred & positive).sum(0).double()
    tuned, f1_tuned = tuned_thresholds(probs, positive)
    pr_precision, pr_recall = pr_curves(probs, positive)
    return {
        "ap": average_precision(probs, positive),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "support": positive.sum(0).double(),
        "threshold": tuned.double(),
        "f1_tuned": f1_tuned.double(),
        "tp": tp, "fp": fp, "fn": fn, "tn": len(probs) - tp - fp - fn,
        "exact": (pred == positive).all(1).sum().double()[None],
        "wrong": (pred != positive).sum().double()[None],
        "pr_precision": pr_precision.double(), "pr_recall": pr_recall.double(),
    }  # fmt: skip


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def summarize(
    results: dict[str, torch.Tensor], seen: float, loss: float, prefix: str
) -> dict[str, float]:
    """The scalar metrics ``{prefix}/...`` of a pass from its (CPU) ``label_results``."""
    support, predicted = results["support"], results["tp"] + results["fp"]
    occurs = (support + predicted) > 0
    present = support > 0
    tp, fp, fn = (float(results[k].sum()) for k in ("tp", "fp", "fn"))
    mean = lambda t, m: float(t[m].mean()) if m.any() else float("nan")  # noqa: E731
    return {
        f"{prefix}/loss": loss / seen,
        f"{prefix}/mAP": mean(results["ap"], present),
        f"{prefix}/micro_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        f"{prefix}/macro_f1": mean(results["f1"], occurs),
        f"{prefix}/macro_f1_tuned": mean(results["f1_tuned"], present),
        f"{prefix}/exact_match": float(results["exact"]) / seen,
        f"{prefix}/hamming_loss": float(results["wrong"]) / (seen * len(support)),
    }


class MultiLabelScore:
    """Scores a multi-label validation or test pass as ``Engine.run_eval`` runs it.

    ``score`` keeps each batch's sigmoid probabilities and targets on the device; ``end``
    gathers them over ranks, computes ``label_results`` on the device and reads them back
    once, then records the metrics in ``state`` (``state.metrics`` and
    ``state.label_metrics``). A sanity check records nothing.

    Args:
        state: where the metrics go.
        phase: "sanity", "val" or "test".
        classes: class names by index.
        loss_fn: the loss of a batch.
        device: where the predictions gather.
        thresholds: per-class decision thresholds; default ``state.thresholds``, else 0.5.

    Attributes:
        metrics: the recorded metrics once ``end`` ran (``{}`` when the pass saw no image).
        results: the pass's per-class results on the CPU once ``end`` ran, else None.
    """

    def __init__(
        self,
        state: EngineState,
        phase: str,
        classes: Sequence[str],
        loss_fn: LossFn,
        device: torch.device,
        thresholds: Sequence[float] | None = None,
    ) -> None:
        self.state, self.phase, self.classes, self.loss_fn = state, phase, classes, loss_fn
        chosen = thresholds or state.thresholds or [DEFAULT_THRESHOLD] * len(classes)
        self.thresholds = torch.tensor(list(chosen), device=device)
        self.device = device
        self.loss = torch.zeros((), device=device)
        self.probs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.metrics: dict[str, float] = {}
        self.results: dict[str, torch.Tensor] | None = None
        self.start = time.perf_counter()

    def score(self, logits: torch.Tensor, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add a batch ``(images, targets)``; returns ``{"loss", "logits", "targets"}``."""
        targets = batch[1]
        loss = self.loss_fn(logits, targets)
        self.loss += loss * targets.shape[0]
        self.probs.append(logits.float().sigmoid())
        self.targets.append(targets)
        return {"loss": loss, "logits": logits, "targets": targets}

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = len(self.classes)
        probs = torch.cat(self.probs) if self.probs else torch.zeros(0, c, device=self.device)
        targets = torch.cat(self.targets) if self.targets else torch.zeros_like(probs)
        if get_world_size() > 1:  # average precision needs every rank's images
            parts = all_gather_object((probs.cpu(), targets.cpu()))
            probs = torch.cat([p for p, _ in parts]).to(self.device)
            targets = torch.cat([t for _, t in parts]).to(self.device)
        return probs, targets > 0.5

    def end(self) -> None:
        """Compute the pass's results and record them in ``state`` (not for a sanity check)."""
        if self.phase == "sanity":
            return
        probs, positive = self._gathered()
        loss = all_reduce_sum(self.loss.double()[None])
        if not len(probs):
            return
        results = label_results(probs, positive, self.thresholds)
        names = list(results)
        packed = torch.cat([loss] + [results[k].flatten() for k in names]).cpu()  # one read
        out, at = {}, 1
        for k in names:
            size = results[k].numel()
            out[k] = packed[at : at + size].view(results[k].shape)
            at += size
        self.results = out
        prefix = "test" if self.phase == "test" else "val"
        metrics = summarize(out, float(len(probs)), float(packed[0]), prefix)
        metrics[f"{prefix}/time"] = time.perf_counter() - self.start
        self.state.label_metrics = per_class_table(out, self.classes)
        self.state.metrics.update(metrics)
        self.metrics = metrics


def per_class_table(results: dict[str, torch.Tensor], classes: Sequence[str]) -> dict[str, Any]:
    """``state.label_metrics``: plain lists by class index (``PER_CLASS``), ``classes``, and
    the precision-recall curves (``pr_precision``, ``pr_recall``: a list per class)."""
    table: dict[str, Any] = {"classes": list(classes)}
    for k in PER_CLASS:
        table[k] = results[k].tolist()
    table["pr_precision"] = results["pr_precision"].tolist()
    table["pr_recall"] = results["pr_recall"].tolist()
    return table
