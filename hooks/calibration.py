"""CalibrationHook: the reliability diagram of the latest validation, ``plots/reliability.png``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from hooks.render.plots import plot_reliability, save_png
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.run_files import PLOTS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from trainer.engine import Engine


class CalibrationHook(Hook):
    """Redraws ``plots/reliability.png`` after each validation: whether the probabilities can
    be trusted.

    For each of 15 confidence bins, the accuracy of the images whose top-1 probability fell in
    it, against the diagonal of perfect calibration, and the number of images per bin. The
    counts are the engine's (``engine.state.calibration``, gathered on the device during
    validation and summed over ranks); the title gives ``val/ece``, the expected calibration
    error (torchmetrics' ``MulticlassCalibrationError``). The sanity check is left out; rank 0
    draws, on the run's artefact writer.

    Args:
        out_dir: the run folder.

    Attributes:
        figure: the latest diagram, for display in a notebook.

    Example:
        >>> hook = CalibrationHook("runs/a")
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.figure
    """

    order = 50

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / PLOTS / "reliability.png"
        self.figure: Figure | None = None

    @rank_zero_only
    def on_validation_end(self, engine: Engine) -> None:
        s = engine.state
        if s.phase != "val" or s.calibration is None:
            return
        bins = s.calibration.numpy().copy()  # a copy: the writer draws while training goes on
        caption = f"epoch {s.epoch + 1}" + (f", step {s.step}" if s.mid_epoch else "")
        if "val/ece" in s.metrics:
            caption += f", ECE {s.metrics['val/ece']:.3f}"
        path = self.path

        def job() -> None:
            self.figure = plot_reliability(bins, caption)
            save_png(self.figure, path)

        engine.artifacts.submit(job, path, replace=True)
