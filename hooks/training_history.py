"""TrainingHistoryHook: loss, accuracy and learning-rate curves, redrawn as epochs end."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from hooks._artifacts import flush, save_png, submit
from trainer.distributed import rank_zero_only
from trainer.hook import Hook

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainer.engine import Engine

# file stem -> (title, y label, [(history key, legend label)])
PLOTS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "loss": ("Loss", "loss", [("train/loss", "train"), ("val/loss", "val")]),
    "accuracy": (
        "Accuracy",
        "accuracy",
        [("train/acc", "train top-1"), ("val/acc", "val top-1"), ("val/acc_top5", "val top-5")],
    ),
    "lr": ("Learning rate (end of epoch)", "lr", [("lr", "lr")]),
}


class TrainingHistoryHook(Hook):
    """Rewrites ``plots/loss.png``, ``plots/accuracy.png`` and ``plots/lr.png`` each epoch.

    Each epoch asks for a redraw; when epochs are short the artefact writer redraws only as
    often as its CPU budget allows (see ``hooks._artifacts.submit``), and always at fit end.

    Curves come from ``engine.state.history``, so a resumed run plots its whole past. The x
    axis counts epochs from 1. Every point has a marker, so a one-epoch run still shows, and
    a NaN or infinite value leaves a gap instead of breaking the plot. A series absent from
    the history (e.g. ``val/acc_top5`` under 5 classes) is left out.

    Args:
        out_dir: the run folder.

    Attributes:
        figures: the latest figure per plot, keyed "loss", "accuracy" and "lr".

    Example:
        >>> hook = TrainingHistoryHook("runs/a")
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.figure  # the loss curves, in a notebook
    """

    order = 50

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir) / "plots"
        self.figures: dict[str, Figure] = {}

    @property
    def figure(self) -> Figure | None:
        """The latest loss figure (all three are in ``figures``)."""
        return self.figures.get("loss")

    @rank_zero_only  # rank 0 writes the files under DDP
    def on_train_epoch_end(self, engine: Engine) -> None:
        # A copy: the writer thread draws it while the engine goes on appending rows.
        history = [dict(row) for row in engine.state.history]
        for stem in PLOTS:
            path = self.dir / f"{stem}.png"
            # Redrawn whole from the history: a newer job replaces a queued one, and on short
            # epochs the redraws wait for the writer's CPU budget (always drawn at fit end).
            submit(functools.partial(self._plot, history, stem, path), path, replace=True)

    def on_fit_end(self, engine: Engine) -> None:
        flush()  # the plots exist when fit returns

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        flush()

    def _plot(self, history: list[dict[str, float]], stem: str, path: Path) -> None:
        """Draw one plot and write it; runs on the artefact writer thread.

        The figure is built once and its lines updated in place on later epochs: no layout
        engine, a fixed small size, so a redraw costs ~40 ms instead of ~0.2 s.
        """
        title, ylabel, series = PLOTS[stem]
        fig = self.figures.get(stem)
        if fig is None:
            fig = self.figures[stem] = _new_figure(title, ylabel)
        ax = fig.axes[0]
        lines = {str(line.get_label()): line for line in ax.get_lines()}
        epochs = [int(row.get("epoch", i)) + 1 for i, row in enumerate(history)]
        size = 3 if len(epochs) > 30 else 5
        plotted: list[float] = []
        for key, name in series:
            if any(key in row for row in history):
                ys = [_finite(row.get(key)) for row in history]
                if name in lines:
                    lines[name].set_data(epochs, ys)
                    lines[name].set_markersize(size)
                else:
                    # Series order fixes the colour (C0, C1, ...) whichever appears first.
                    color = f"C{[k for k, _ in series].index(key)}"
                    ax.plot(epochs, ys, marker="o", markersize=size, label=name, color=color)
                plotted += [y for y in ys if not math.isnan(y)]
            elif name in lines:  # gone from the history (a resume into another run)
                lines[name].remove()
        log = stem == "lr" and plotted and min(plotted) > 0 and max(plotted) / min(plotted) > 20
        ax.set_yscale("log" if log else "linear")  # warmup and cosine decay span decades
        ax.relim()
        ax.autoscale_view()
        names = [str(line.get_label()) for line in ax.get_lines()]
        if len(series) > 1 and names and names != list(lines):
            # Rebuilt only when the set of lines changes; a fixed corner, since "best" searches
            # the data each draw (loss falls, so upper right; accuracy rises, so lower right).
            ax.legend(loc="upper right" if stem == "loss" else "lower right")
        save_png(fig, path, dpi=_DPI)


# Fixed size and dpi: 640 x 420 px, as the layout-managed figures were, without the layout.
_SIZE, _DPI = (6.4, 4.2), 100


def _new_figure(title: str, ylabel: str) -> Figure:
    # Deferred: matplotlib costs ~0.2 s to import, paid only by runs that plot.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=_SIZE, dpi=_DPI)
    # Margins fixed by hand: the constrained layout solver cost more than the drawing.
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    # Whole epochs only; matplotlib would otherwise tick 1.0, 1.5, 2.0 ...
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    return fig


def _finite(value: float | None) -> float:
    if value is None or not math.isfinite(value):
        return math.nan
    return float(value)
