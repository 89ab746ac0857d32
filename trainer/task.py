"""The task of a run: what the engine asks about besides the loop itself.

Multi-class (one label per image, the default) and multi-label (a set of labels per image,
``trainer.multilabel``) differ in their default loss, in what training and validation count,
in the monitored metric and in how logits become probabilities; the engine's loop is the same.
``trainer.tasks.task_of(data)`` picks the task from ``data.task`` ("multiclass" when the data
has none).

Example:
    >>> task = ClassificationTask()
    >>> task.probabilities(torch.zeros(1, 3)).sum().item()
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from trainer.metrics import ConfusionCounter, EvalScore, LossFn, TrainTally

if TYPE_CHECKING:
    from trainer.state import EngineState


class Scorer(Protocol):
    """Scores an evaluation pass batch by batch (``EvalScore`` is one) and records it."""

    metrics: dict[str, float]

    def score(
        self, logits: torch.Tensor, batch: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]: ...

    def end(self) -> None: ...


class ClassificationTask:
    """Multi-class classification: softmax, cross-entropy, accuracy; monitor ``val/acc``."""

    name = "multiclass"
    default_monitor = "val/acc"

    def loss(self, label_smoothing: float) -> nn.Module:
        """The loss the engine trains with when it is given none."""
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def train_tally(self, device: torch.device) -> TrainTally:
        """What a training epoch counts (loss and ``train/acc``), on the device."""
        return TrainTally(device)

    def scorer(
        self,
        state: EngineState,
        phase: str,
        classes: Sequence[str],
        loss_fn: LossFn,
        device: torch.device,
        confmat: ConfusionCounter | None = None,
    ) -> Scorer:
        """What scores a validation or test pass (see ``EvalScore``)."""
        return EvalScore(state, phase, classes, loss_fn, device, confmat)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` to probabilities."""
        return logits.softmax(1)

    def monitor(self, monitor: str | None) -> str:
        """The metric to monitor: ``monitor``, or unset (None) this task's ``default_monitor``
        (the multi-label task also takes the multi-class default, val/acc, for its own)."""
        return self.default_monitor if monitor is None else monitor


def is_multilabel(data: Any) -> bool:
    """Whether ``data`` (an engine's ``data``) is multi-label: the hooks that assume one label
    per image switch themselves off, or adapt, by it."""
    return getattr(data, "task", "multiclass") == "multilabel"
