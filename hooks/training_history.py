"""TrainingHistoryHook: loss, accuracy and learning-rate curves, redrawn as epochs end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from hooks.render.plots import plot_history, save_png
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.run_files import PLOTS as PLOTS_DIR

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainer.engine import Engine

# file stem -> (title, y label, [(history key, legend label)])
PLOTS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "loss": ("Loss", "loss", [("train/loss", "train"), ("val/loss", "val")]),
    "accuracy": (
        "Accuracy",
        "accuracy",
        [
            ("train/acc", "train top-1"),
            ("val/acc", "val top-1"),
            ("val/acc_top5", "val top-5"),
            ("val/mAP", "val mAP"),
        ],
    ),
    "lr": ("Learning rate (end of epoch)", "lr", [("lr", "lr")]),
}


class TrainingHistoryHook(Hook):
    """Rewrites ``plots/loss.png``, ``plots/accuracy.png`` and ``plots/lr.png`` each epoch.

    The loss plot also shows the training loss every N steps (``engine.state.step_log``,
    written by ``StepLogHook``), at ``step / steps_per_epoch`` on the epoch axis.

    Curves come from ``engine.state.history``, so a resumed run plots its whole past. The x
    axis counts epochs from 1; a NaN or infinite value leaves a gap; a series absent from the
    history (e.g. ``val/acc_top5`` under 5 classes) is left out. The plots are drawn on the
    run's artefact writer; if it falls behind, a queued redraw is replaced by the newer one.

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
        self.dir = Path(out_dir) / PLOTS_DIR
        self.figures: dict[str, Figure] = {}

    @property
    def figure(self) -> Figure | None:
        """The latest loss figure (all three are in ``figures``)."""
        return self.figures.get("loss")

    @rank_zero_only
    def on_train_epoch_end(self, engine: Engine) -> None:
        # A copy: the writer draws it while the engine goes on appending rows.
        history = [dict(row) for row in engine.state.history]
        rows = engine.state.step_log
        steps = [(r["step"] / max(1, engine.steps_per_epoch), r["loss"]) for r in rows]
        for stem in PLOTS:
            path = self.dir / f"{stem}.png"

            def job(stem: str = stem, path: Path = path) -> None:
                series = steps if stem == "loss" else []
                self.figures[stem] = plot_history(history, *PLOTS[stem], steps=series)
                save_png(self.figures[stem], path)

            engine.artifacts.submit(job, path, replace=True)
