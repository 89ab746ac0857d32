"""EngineState: everything about where a run is, in one place."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class EngineState:
    """The engine's mutable state; hooks read it and may set ``should_stop``.

    Attributes:
        phase: "idle", "sanity", "train", "val" or "test".
        epoch: index of the current (or last finished) epoch, from 0.
        max_epochs: epochs the fit runs for.
        step: optimizer steps taken since the run began (not micro-batches).
        batch_idx: index of the current batch within its loader.
        num_batches: batches in the loader being run.
        metrics: this epoch's scalar metrics, e.g. ``train/loss``, ``val/acc``, ``lr``.
        per_class_acc: last validation's accuracy per class name; None where val has no sample.
        confusion_matrix: the last validation's (or test's) confusion matrix over all ranks, a
            CPU int64 tensor, rows = true class; None before any. Hooks render it.
        calibration: the last validation's (or test's) confidence histogram over all ranks,
            CPU float64 ``(3, bins + 1)``: count, confidence sum, hit sum per bin (see
            ``trainer.metrics.EvalCounts``); None before any. The reliability diagram's data.
        label_metrics: multi-label data: the last validation's (or test's) per-class results
            (``trainer.multilabel.per_class_table``: AP, precision, recall, F1, support, tuned
            threshold, precision-recall curves); None otherwise. Left out of checkpoints.
        thresholds: multi-label data: the per-class thresholds tuned on the validation of
            the best epoch (max F1), or None before one; the export and predictions use them.
        mid_epoch: True while a validation runs inside a training epoch (``val_every`` below
            an epoch); checkpoints written then are best-model files, not resume points.
        history: one dict per finished epoch (``epoch`` plus every metric); ``fit()`` returns it.
        step_log: one dict every N optimizer steps (``step``, ``epoch``, ``lr``, ``loss``,
            ``img_s``), appended by ``hooks.StepLogHook``; ``steps.csv`` holds the same rows.
        best: the history row of the best epoch by ``Engine.monitor``, or None before any.
        is_best: whether the epoch that just ended is the new best.
        should_stop: set True (by a hook) to end the fit at the next batch or epoch boundary.
        finished: True once a fit ran all its epochs or was stopped; a resumed finished run
            does not train again.
        stop_reason: why the fit ended early, for the summary.
    """

    phase: str = "idle"
    epoch: int = 0
    max_epochs: int = 0
    step: int = 0
    batch_idx: int = 0
    num_batches: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    per_class_acc: dict[str, float | None] = field(default_factory=dict)
    confusion_matrix: torch.Tensor | None = None
    calibration: torch.Tensor | None = None
    label_metrics: dict[str, Any] | None = None
    thresholds: list[float] | None = None
    mid_epoch: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    step_log: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    is_best: bool = False
    should_stop: bool = False
    finished: bool = False
    stop_reason: str = ""

    def state_dict(self) -> dict[str, Any]:
        """Every field but the confusion matrix and calibration (plots keep them; checkpoints
        need not)."""
        # Not asdict: it would deep-copy the matrix (8 MB at 1,000 classes) only to drop it.
        fields = {f.name: getattr(self, f.name) for f in dataclass_fields(self)}
        del fields["confusion_matrix"], fields["calibration"], fields["label_metrics"]
        return copy.deepcopy(fields)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, value)
