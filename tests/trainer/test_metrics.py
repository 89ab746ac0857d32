"""trainer/metrics.py: better-under-mode, and the device-side tallies of the loops."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.metrics import (
    EvalCounts,
    EvalTally,
    TrainTally,
    class_metrics,
    confusion_counter,
    is_better,
)


@pytest.mark.parametrize(
    ("value", "best", "mode", "min_delta", "better"),
    [
        (0.9, None, "max", 0.0, True),  # anything beats nothing
        (0.9, 0.8, "max", 0.0, True),
        (0.8, 0.8, "max", 0.0, False),  # equal is not better
        (0.85, 0.8, "max", 0.1, False),  # not by more than min_delta
        (0.3, 0.4, "min", 0.0, True),
        (0.5, 0.4, "min", 0.0, False),
        (math.nan, None, "max", 0.0, False),  # NaN never improves
        (None, 0.4, "min", 0.0, False),
    ],
)
def test_is_better(value, best, mode, min_delta, better) -> None:  # type: ignore[no-untyped-def]
    assert is_better(value, best, mode, min_delta) is better


def test_train_tally_leaves_out_batches_with_a_non_finite_loss() -> None:
    tally = TrainTally(torch.device("cpu"))
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    tally.update(torch.tensor(0.5), logits, torch.tensor([0, 0]))  # one of two right
    tally.update(torch.tensor(math.inf), logits, torch.tensor([0, 1]))  # skipped step
    loss, acc, seen = tally.compute()
    assert (loss, acc, seen) == (0.5, 0.5, 4)
    only_bad = TrainTally(torch.device("cpu"))
    only_bad.update(torch.tensor(math.nan), logits, torch.tensor([0, 1]))
    loss, acc, seen = only_bad.compute()
    assert math.isnan(loss) and math.isnan(acc) and seen == 2


def test_eval_tally_counts_the_confusion_matrix_loss_and_top5() -> None:
    tally = EvalTally(6, torch.device("cpu"))
    logits = torch.tensor(  # predicts 0, 1, 2; the third image's class 3 comes second
        [[5.0, 0, 0, 0, 0, -1], [0, 5.0, 0, 0, 0, -1], [0, 1.0, 5, 4, 2, -1]]
    )
    tally.update(torch.tensor(1.0), logits, torch.tensor([0, 1, 3]))
    cm, loss, top5, seen, _ = tally.compute(confusion_counter(6, torch.device("cpu")))
    assert cm.dtype == torch.int64 and cm.sum() == 3
    assert cm[0, 0] == cm[1, 1] == cm[3, 2] == 1  # rows = true class
    assert (loss, seen) == (3.0, 3)
    assert top5 == 3  # every true class is among its image's five highest logits


def _tally_of(logits: torch.Tensor, targets: torch.Tensor, batch: int = 64) -> EvalCounts:
    """An EvalTally fed ``logits`` batch by batch, computed."""
    n = logits.shape[1]
    tally = EvalTally(n, torch.device("cpu"))
    for lo, y in zip(logits.split(batch), targets.split(batch), strict=True):
        tally.update(torch.tensor(0.0), lo, y)
    return tally.compute(confusion_counter(n, torch.device("cpu")))


def _predictions(n_classes: int = 7, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    targets = torch.randint(0, n_classes, (n,), generator=g)
    # Better than chance, with every confidence from ~1/C up to exactly 1.
    logits = torch.randn(n, n_classes, generator=g) * torch.rand(n, 1, generator=g) * 4
    logits[torch.arange(n), targets] += torch.rand(n, generator=g) * 3
    logits[:5, 0] = 200.0  # softmax gives exactly 1.0: torchmetrics' extra last bin
    return logits, targets


def test_per_class_metrics_agree_with_torchmetrics() -> None:
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassF1Score,
        MulticlassPrecision,
        MulticlassRecall,
    )

    logits, targets = _predictions()
    c = logits.shape[1]
    ours = class_metrics(_tally_of(logits, targets).confusion)
    for key, metric in [
        ("accuracy", MulticlassAccuracy(c, average=None)),
        ("precision", MulticlassPrecision(c, average=None)),
        ("recall", MulticlassRecall(c, average=None)),
        ("f1", MulticlassF1Score(c, average=None)),
    ]:
        torch.testing.assert_close(ours[key], metric(logits, targets).double(), msg=key)
    assert ours["support"].tolist() == torch.bincount(targets, minlength=c).double().tolist()


@pytest.mark.parametrize("absent", [False, True])
def test_summary_metrics_agree_with_torchmetrics(absent: bool) -> None:
    from torchmetrics.classification import (
        MulticlassCalibrationError,
        MulticlassF1Score,
        MulticlassRecall,
    )

    logits, targets = _predictions()
    c = logits.shape[1]
    if absent:  # class 6 never occurs; class 5 is predicted but has no image
        keep = targets < 5
        logits, targets = logits[keep], targets[keep]
        logits[:, 6] = -50.0
        logits[:3, 5] = 100.0
    metrics = _tally_of(logits, targets).summary("val")
    macro_f1 = MulticlassF1Score(c, average="macro")(logits, targets)
    ece = MulticlassCalibrationError(c, n_bins=15, norm="l1")(logits, targets)
    assert metrics["val/macro_f1"] == pytest.approx(float(macro_f1), abs=1e-6)
    assert metrics["val/ece"] == pytest.approx(float(ece), abs=1e-6)
    assert metrics["val/ece"] > 0.01  # not trivially 0
    recall = MulticlassRecall(c, average=None)(logits, targets)
    # Balanced accuracy averages over the classes that have images (scikit-learn's definition).
    present = torch.bincount(targets, minlength=c) > 0
    assert metrics["val/balanced_acc"] == pytest.approx(float(recall[present].mean()), abs=1e-6)
    if not absent:
        macro_recall = MulticlassRecall(c, average="macro")(logits, targets)
        assert metrics["val/balanced_acc"] == pytest.approx(float(macro_recall), abs=1e-6)


def test_calibration_bins_count_every_image_once() -> None:
    logits, targets = _predictions()
    bins = _tally_of(logits, targets, batch=50).calibration
    assert bins.shape == (3, 16)
    assert bins[0].sum() == len(targets)
    assert bins[0, -1] == 5  # the five confidences of exactly 1
    hits = (logits.argmax(1) == targets).sum()
    assert bins[2].sum() == hits
