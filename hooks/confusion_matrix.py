"""ConfusionMatrixHook: the validation confusion matrix per epoch, as PNG and JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hooks._artifacts import flush, guarded, label, save_png, submit
from trainer.distributed import all_reduce_sum, is_distributed, is_global_zero
from trainer.hook import Hook
from trainer.io import atomic_write_json

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from torchmetrics.classification import MulticlassConfusionMatrix

    from trainer.engine import Engine

# Above this many classes the axes show indices and a legend maps index -> name.
_MAX_NAMED = 30
# Up to this many classes each cell shows its number.
_MAX_ANNOTATED = 20


class ConfusionMatrixHook(Hook):
    """Writes ``plots/confusion_matrix/epoch_XXX.png`` and ``.json`` after each validation.

    The PNG has the counts and the row-normalised matrix (recall per true class) side by side;
    the JSON holds ``classes``, ``matrix`` (counts, rows = true class) and ``normalized``.
    ``XXX`` is ``engine.state.epoch`` (from 0, as in ``metrics.csv`` and checkpoint names).
    The sanity check is left out.

    Each validation batch only stores the predicted and true class indices on the device; the
    torchmetrics matrix is updated once at the epoch end, because its update (``bincount``)
    reads the device on CUDA and would stall every batch. Under DDP each rank sees its shard of
    the validation split; the matrices are summed over ranks and rank 0 writes the files.

    Args:
        out_dir: the run folder.

    Attributes:
        matrix: the latest confusion matrix, a CPU int64 tensor (rows = true class), or None.
        figure: the latest figure, for display in a notebook.

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
        self._metric: MulticlassConfusionMatrix | None = None
        self._preds: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def _ensure_metric(self, engine: Engine) -> MulticlassConfusionMatrix:
        # Deferred, like matplotlib below: torchmetrics pulls in matplotlib.pyplot on import.
        from torchmetrics.classification import MulticlassConfusionMatrix

        n = engine.data.num_classes
        if self._metric is None or self._metric.num_classes != n:
            # Summed over ranks below, explicitly: torchmetrics' own sync would be a second
            # collective that a rank with an empty validation shard never reaches.
            self._metric = MulticlassConfusionMatrix(
                n, validate_args=False, sync_on_compute=False
            ).to(engine.device)
        return self._metric

    def on_fit_start(self, engine: Engine) -> None:
        self._ensure_metric(engine)

    def on_validation_epoch_start(self, engine: Engine) -> None:
        self._preds, self._targets = [], []

    def on_validation_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        if engine.state.phase != "val":
            return
        self._preds.append(outputs["logits"].argmax(1))
        self._targets.append(outputs["targets"])

    def on_validation_epoch_end(self, engine: Engine) -> None:
        # Under DDP a rank with an empty shard must still join the all-reduce.
        if engine.state.phase != "val" or not (self._preds or is_distributed()):
            return
        metric = self._ensure_metric(engine)
        metric.reset()
        if self._preds:
            metric.update(torch.cat(self._preds), torch.cat(self._targets))
            local = metric.compute()
        else:
            n = engine.data.num_classes
            local = torch.zeros(n, n, dtype=torch.long, device=engine.device)
        self._preds, self._targets = [], []
        self.matrix = all_reduce_sum(local.clone()).cpu().long()
        if not is_global_zero():
            return
        classes = list(engine.data.classes)
        stem = self.dir / f"epoch_{engine.state.epoch:03d}"
        counts = self.matrix.numpy()
        support = counts.sum(axis=1, keepdims=True)
        # A class with no validation image gets a zero row rather than NaNs.
        normalized = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
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
        png, epoch, counts = stem.with_suffix(".png"), engine.state.epoch + 1, counts.copy()

        def job() -> None:  # on the artefact writer: drawing is most of this hook's cost
            # Titles count epochs from 1, like the history plots; file names keep the index.
            self.figure = plot_confusion_matrix(counts, normalized, classes, epoch)
            save_png(self.figure, png)

        submit(job, png)

    def on_fit_end(self, engine: Engine) -> None:
        flush()  # the PNGs exist when fit returns

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        flush()


def plot_confusion_matrix(
    counts: np.ndarray, normalized: np.ndarray, classes: list[str], epoch: int
) -> Figure:
    """Counts and row-normalised panels side by side, sized so 100 classes stay readable.

    Args:
        counts: the confusion matrix, rows = true class.
        normalized: ``counts`` divided by each row's sum (zero rows stay zero).
        classes: class names by index.
        epoch: the epoch number shown in the titles.
    """
    from matplotlib.figure import Figure  # deferred: matplotlib costs ~0.2 s to import

    n = len(classes)
    named = n <= _MAX_NAMED
    panel = float(np.clip(2.5 + 0.16 * n, 4.5, 18.0))  # inches per panel
    legend_cols = 0 if named else int(np.ceil(n / 50))
    width = 2 * panel + 1.5 + 2.2 * legend_cols
    fig = Figure(figsize=(width, panel + 1.2), layout="constrained")
    grid = fig.add_gridspec(
        1,
        2 + (legend_cols > 0),
        width_ratios=[panel, panel] + ([2.2 * legend_cols] if legend_cols else []),
    )
    font = float(np.clip(200 / max(n, 1), 5, 10))
    ticks = [label(c, 18) for c in classes] if named else [str(i) for i in range(n)]
    for k, (values, title, fmt) in enumerate(
        [(counts, "counts", "d"), (normalized, "normalised by true class", ".2f")]
    ):
        ax = fig.add_subplot(grid[0, k])
        vmax = 1.0 if k else max(1, int(counts.max()))
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8)
        _ticks(ax, ticks, font, named)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} (epoch {epoch})")
        if n <= _MAX_ANNOTATED:
            for i in range(n):
                for j in range(n):
                    v = values[i, j]
                    ax.text(
                        j,
                        i,
                        format(v, fmt),
                        ha="center",
                        va="center",
                        fontsize=font,
                        color="white" if v > 0.6 * vmax else "black",
                    )
    if legend_cols:
        ax = fig.add_subplot(grid[0, 2])
        ax.axis("off")
        lines = [f"{i}: {label(c)}" for i, c in enumerate(classes)]
        for col in range(legend_cols):
            ax.text(
                col / legend_cols,
                1.0,
                "\n".join(lines[col * 50 : (col + 1) * 50]),
                va="top",
                ha="left",
                fontsize=6,
                family="monospace",
                transform=ax.transAxes,
            )
    return fig


def _ticks(ax: Axes, names: list[str], font: float, named: bool) -> None:
    n = len(names)
    # Past ~100 classes even indices overlap; show every k-th.
    step = max(1, int(np.ceil(n / 100)))
    pos = list(range(0, n, step))
    ax.set_xticks(
        pos,
        [names[i] for i in pos],
        fontsize=font,
        rotation=45 if named else 90,
        ha="right" if named else "center",
        rotation_mode="anchor" if named else None,
    )
    ax.set_yticks(pos, [names[i] for i in pos], fontsize=font)
