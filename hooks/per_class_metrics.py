"""PerClassMetricsHook: ``per_class.csv``, each class's accuracy, precision, recall, F1 and
support at every validation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hooks.render.csv_log import CsvLog
from hooks.render.plots import plot_pr_curves, save_png
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.metrics import class_metrics
from trainer.run_files import PER_CLASS_CSV, PLOTS
from trainer.task import is_multilabel

if TYPE_CHECKING:
    from trainer.engine import Engine

HEADER = ["epoch", "step", "class_index", "class", "accuracy", "precision", "recall", "f1",
          "support"]  # fmt: skip
METRICS = ["accuracy", "precision", "recall", "f1", "support"]
# Multi-label data (``engine.state.label_metrics``): AP, and the F1-tuned threshold.
LABEL_HEADER = ["epoch", "step", "class_index", "class", "ap", "precision", "recall", "f1",
                "support", "threshold", "tp", "fp", "fn", "tn"]  # fmt: skip


class PerClassMetricsHook(Hook):
    """Appends one row per class to ``per_class.csv`` after each validation.

    The numbers come from the confusion matrix the engine already counted
    (``engine.state.confusion_matrix``, summed over ranks): no second pass over the logits,
    no second all-reduce. ``accuracy`` is torchmetrics' per-class accuracy (the share of the
    class's images predicted as it, so the same as ``recall``); a ratio with nothing to
    divide by is 0, as in torchmetrics; ``support`` is the class's validation images. Epochs
    count from 0 as in ``metrics.csv``; ``step`` tells apart the validations inside an epoch
    (``--val-every``). The sanity check is left out; rank 0 writes. A resumed run drops the
    rows after its checkpoint's step, so each validation appears once.

    Multi-label data: the columns are ``LABEL_HEADER``, from ``engine.state.label_metrics``
    (AP; precision, recall and F1 at the thresholds in force; the images carrying the class;
    the threshold tuned on this validation; the 2x2 counts), and ``plots/pr_curves.png``, the
    latest validation's precision-recall curve of each class (``hooks.render.plots``).

    Args:
        out_dir: the run folder.

    Attributes:
        latest: the last validation's rows, as written.

    Example:
        >>> hook = PerClassMetricsHook("runs/a")
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> min(hook.latest, key=lambda row: row[7])  # the class with the lowest F1
    """

    order = 20

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.log = CsvLog(Path(out_dir) / PER_CLASS_CSV, HEADER)
        self.latest: list[list[Any]] = []

    @rank_zero_only
    def on_fit_start(self, engine: Engine) -> None:
        if is_multilabel(engine.data):
            self.log = CsvLog(self.log.path, LABEL_HEADER)
        self.log.start(engine.state.step)

    @rank_zero_only
    def on_validation_end(self, engine: Engine) -> None:
        s = engine.state
        if s.phase == "val" and s.label_metrics is not None:
            table = s.label_metrics
            self.latest = [
                [s.epoch, s.step, i, name, *(round(table[k][i], 6) for k in LABEL_HEADER[4:])]
                for i, name in enumerate(engine.data.classes)
            ]
            self.log.append(engine.artifacts, self.latest)
            self._pr_curves(engine, table)
        if s.phase != "val" or s.confusion_matrix is None:
            return
        values = class_metrics(s.confusion_matrix)
        columns = [values[k].tolist() for k in METRICS]
        self.latest = [
            [s.epoch, s.step, i, name, *(round(c[i], 6) for c in columns[:-1]), int(columns[-1][i])]
            for i, name in enumerate(engine.data.classes)
        ]
        self.log.append(engine.artifacts, self.latest)

    def _pr_curves(self, engine: Engine, table: dict[str, Any]) -> None:
        path = self.log.path.parent / PLOTS / "pr_curves.png"
        classes, epoch = list(engine.data.classes), engine.state.epoch

        def draw() -> None:
            fig = plot_pr_curves(table["pr_precision"], table["pr_recall"], table["ap"], classes,
                                 f"epoch {epoch + 1}")  # fmt: skip
            save_png(fig, path)

        engine.artifacts.submit(draw, path)
