"""ConfusionMatrixHook: the validation confusion matrix per epoch, as PNG and NPZ (and JSON)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hooks.render.plots import MAX_GRID, plot_confusion_matrix, plot_label_confusion, save_png
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_bytes, atomic_write_json
from trainer.run_files import PLOTS

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from trainer.engine import Engine


class ConfusionMatrixHook(Hook):
    """Writes ``plots/confusion_matrix/epoch_XXX.png`` and ``.npz`` after each validation.

    It renders the matrix the engine already counted (``engine.state.confusion_matrix``,
    summed over ranks under DDP): no second metric, no second all-reduce. The PNG has the
    counts and the row-normalised matrix (recall per true class) side by side; above 50
    classes, the most confused pairs and the lowest per-class accuracies instead
    (``hooks.render.plots.plot_confusion_matrix``). The ``.npz`` (compressed; tens of KB at 1,000
    classes) holds ``matrix`` (int64 counts, rows = true class), ``classes`` and ``epoch``:
    ``np.load(path)["matrix"]``. Up to 50 classes an ``epoch_XXX.json`` is written too, to
    read by eye: ``classes``, ``matrix`` and ``normalized``. ``XXX`` is ``engine.state.epoch``
    (from 0, as in ``metrics.csv`` and checkpoint names). The sanity check is left out.
    Rank 0 writes the files, on the run's artefact writer.

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
        self.dir = Path(out_dir) / PLOTS / "confusion_matrix"
        self.matrix: torch.Tensor | None = None
        self.figure: Figure | None = None

    @rank_zero_only
    def on_validation_epoch_end(self, engine: Engine) -> None:
        table = engine.state.label_metrics
        if engine.state.phase == "val" and table is not None:  # multi-label: a 2x2 per class
            self._label_summary(engine, table)
        matrix = engine.state.confusion_matrix
        if engine.state.phase != "val" or matrix is None:
            return
        self.matrix = matrix
        classes = list(engine.data.classes)
        counts = matrix.numpy().copy()  # a copy: the writer draws it while training goes on
        epoch = engine.state.epoch
        stem = self.dir / f"epoch_{epoch:03d}"
        npz, png = stem.with_suffix(".npz"), stem.with_suffix(".png")
        caption = f"epoch {epoch + 1}"  # titles count epochs from 1, like the plots

        def save_data() -> None:
            buf = io.BytesIO()
            np.savez_compressed(buf, matrix=counts, classes=np.array(classes, dtype=str),
                                epoch=np.array(epoch))  # fmt: skip
            atomic_write_bytes(npz, buf.getvalue())
            if len(classes) <= MAX_GRID:
                support = counts.sum(axis=1, keepdims=True)
                # A class with no validation image gets a zero row rather than NaNs.
                normalized = np.divide(counts, support, out=np.zeros(counts.shape),
                                       where=support > 0)  # fmt: skip
                doc = {"epoch": epoch, "classes": classes, "matrix": counts.tolist(),
                       "normalized": np.round(normalized, 4).tolist()}  # fmt: skip
                atomic_write_json(stem.with_suffix(".json"), doc)

        def draw() -> None:
            self.figure = plot_confusion_matrix(counts, classes, caption)
            save_png(self.figure, png)

        engine.artifacts.submit(save_data, npz)
        engine.artifacts.submit(draw, png)

    def _label_summary(self, engine: Engine, table: dict[str, Any]) -> None:
        """Multi-label: ``epoch_XXX.json`` and ``.png``, each class's 2x2 counts (TP, FN, FP,
        TN at the thresholds in force) in place of the N x N matrix."""
        epoch, classes = engine.state.epoch, list(engine.data.classes)
        counts = np.array([table[k] for k in ("tp", "fn", "fp", "tn")]).T.astype(np.int64)
        stem = self.dir / f"epoch_{epoch:03d}"
        doc = {"epoch": epoch, "classes": classes, "columns": ["tp", "fn", "fp", "tn"],
               "counts": counts.tolist()}  # fmt: skip
        engine.artifacts.submit(lambda: atomic_write_json(stem.with_suffix(".json"), doc),
                                stem.with_suffix(".json"))  # fmt: skip

        def draw() -> None:
            self.figure = plot_label_confusion(counts, classes, f"epoch {epoch + 1}")
            save_png(self.figure, stem.with_suffix(".png"))

        engine.artifacts.submit(draw, stem.with_suffix(".png"))
