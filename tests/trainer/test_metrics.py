"""trainer/metrics.py: better-under-mode, and the device-side tallies of the loops."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.metrics import EvalTally, TrainTally, confusion_counter, is_better


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
    cm, loss, top5, seen = tally.compute(confusion_counter(6, torch.device("cpu")))
    assert cm.dtype == torch.int64 and cm.sum() == 3
    assert cm[0, 0] == cm[1, 1] == cm[3, 2] == 1  # rows = true class
    assert (loss, seen) == (3.0, 3)
    assert top5 == 3  # every true class is among its image's five highest logits
