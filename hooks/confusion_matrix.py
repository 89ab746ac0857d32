"""ConfusionMatrixHook: the validation confusion matrix per epoch, as PNG and JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hooks.plots import plot_confusion_matrix, save_png
from trainer.artifacts import guarded
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_json

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from trainer.engine import Engine


class ConfusionMatrixHook(Hook):
    """Writes ``plots/confusion_matrix/epoch_XXX.png`` and ``.json`` after each validation.

    It renders the matrix the engine already counted (``engine.state.confusion_matrix``,
    summed over ranks under DDP): no second metric, no second all-reduce. The PNG has the
    counts and the row-normalised matrix (recall per true class) side by side; the JSON holds
    ``classes``, ``matrix`` (counts, rows = true class) and ``normalized``. ``XXX`` is
    ``engine.state.epoch`` (from 0, as in ``metrics.csv`` and checkpoint names). The sanity
    check is left out. Rank 0 writes the files.

    Args:
        out_dir: the run folder.

    Attributes:
        matrix: the latest confusion matrix, a CPU int64 tensor (rows = true class), or None.
        figure: the latest rendering, a matplotlib figure, for display in a notebook.

    Example:
        >>> hook = ConfusionMatrixHook("runs/a")
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.matrix.sum()  # number of validation images
    """

    order = 40

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir) / "plots" / "confusion_matrix"
        self.matrix: torch.Tensor | None = None
        self.figure: Figure | None = None

    @rank_zero_only
    def on_validation_epoch_end(self, engine: Engine) -> None:
        matrix = engine.state.confusion_matrix
        if engine.state.phase != "val" or matrix is None:
            return
        self.matrix = matrix
        classes = list(engine.data.classes)
        counts = matrix.numpy().copy()  # a copy: the writer draws it while training goes on
        support = counts.sum(axis=1, keepdims=True)
        # A class with no validation image gets a zero row rather than NaNs.
        normalized = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
        stem = self.dir / f"epoch_{engine.state.epoch:03d}"
        with guarded(stem.with_suffix(".json")):
            atomic_write_json(
                stem.with_suffix(".json"),
                {
                    "epoch": engine.state.epoch,
                    "classes": classes,
                    "matrix": counts.tolist(),
                    "normalized": np.round(normalized, 4).tolist(),
                },
            )
        png = stem.with_suffix(".png")
        caption = f"epoch {engine.state.epoch + 1}"  # titles count epochs from 1, like the plots

        def job() -> None:
            self.figure = plot_confusion_matrix(counts, classes, caption)
            save_png(self.figure, png)

        engine.artifacts.submit(job, png)
