"""TensorBoardHook: per-epoch scalars, the plot hooks' images and the run's hparams for TensorBoard."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.artifacts import guarded
from trainer.distributed import is_global_zero
from trainer.errors import ConfigError
from trainer.hook import Hook
from trainer.run_files import TENSORBOARD

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from trainer.engine import Engine

MISSING = (
    "TensorBoardHook needs the tensorboard package, which is not installed: "
    "pip install -e '.[tensorboard]' (or pip install tensorboard), or train without it"
)

# (tag, file under the run folder); {epoch:03d} is the epoch index, as the plot hooks name files.
IMAGES = [
    ("confusion_matrix", "plots/confusion_matrix/epoch_{epoch:03d}.png"),
    ("samples/fixed", "plots/samples/epoch_{epoch:03d}_fixed.png"),
    ("samples/mistakes", "plots/samples/epoch_{epoch:03d}_mistakes.png"),
]


class TensorBoardHook(Hook):
    """Logs each epoch to ``out_dir/tensorboard`` for ``tensorboard --logdir runs``.

    Scalars: every number in the epoch's history row (``train/loss``, ``val/acc``, ``lr``,
    ...), tagged as in ``metrics.csv``. Images: the confusion matrix and the sample grids
    that ``ConfusionMatrixHook`` and ``SampleVisualizationHook`` wrote this epoch (read back
    from their PNGs, so nothing is drawn twice; a missing one is skipped). At the end of the
    fit: hparams, i.e. the run's scalar arguments against its best epoch's metrics. The
    TensorBoard step is the epoch counted from 1, as in the plot titles.

    Needs the optional ``tensorboard`` package (``pip install -e '.[tensorboard]'``); without
    it the constructor raises ``ConfigError`` saying so, before any training.

    Args:
        out_dir: the run folder; events go to ``out_dir/tensorboard``.

    Attributes:
        log_dir: where the event files are.

    Example:
        >>> hooks = [*default_hooks("runs/a"), TensorBoardHook("runs/a")]
        >>> Engine(model, data, hooks=hooks).fit()
        >>> # then: tensorboard --logdir runs
    """

    # After the plot hooks (40, 50), whose PNGs it logs.
    order = 60

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(MISSING)
        self.out_dir = Path(out_dir)
        self.log_dir = self.out_dir / TENSORBOARD
        self._writer: SummaryWriter | None = None

    def on_fit_start(self, engine: Engine) -> None:
        if is_global_zero():
            self._writer = _summary_writer_class()(log_dir=str(self.log_dir))

    def on_train_epoch_end(self, engine: Engine) -> None:
        w = self._writer
        if w is None or not engine.state.history:
            return
        row = dict(engine.state.history[-1])  # a copy for the writer thread
        epoch = int(row.get("epoch", engine.state.epoch))
        # On the artefact writer, after the plot hooks' jobs of this epoch (they run first,
        # order 40/50), so the PNGs read back below are this epoch's.
        engine.artifacts.submit(functools.partial(self._log_epoch, w, row, epoch), self.log_dir)

    def _log_epoch(self, w: SummaryWriter, row: dict[str, Any], epoch: int) -> None:
        step = epoch + 1
        for key, value in row.items():
            if key != "epoch" and isinstance(value, int | float):
                w.add_scalar(key, value, step)
        for tag, pattern in IMAGES:
            path = self.out_dir / pattern.format(epoch=epoch)
            if path.is_file():
                with guarded(self.log_dir):
                    w.add_image(tag, _read_png(path), step, dataformats="CHW")
        w.flush()

    def on_fit_end(self, engine: Engine) -> None:
        w, self._writer = self._writer, None
        if w is None:
            return
        best = engine.state.best or (engine.state.history[-1] if engine.state.history else {})
        metrics = {
            f"best/{k}": float(v)
            for k, v in best.items()
            if k != "epoch" and isinstance(v, int | float) and math.isfinite(v)
        }
        if metrics:
            # run_name "." keeps the hparams beside the scalars instead of in a timestamped subfolder.
            args = hparams(engine)
            engine.artifacts.submit(
                lambda: w.add_hparams(args, metrics, run_name="."), self.log_dir
            )
        # Closed after this fit's epochs are logged: the writer runs jobs in order.
        engine.artifacts.submit(w.close, self.log_dir)

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        w, self._writer = self._writer, None
        if w is not None:  # what was logged so far stays readable
            engine.artifacts.submit(w.close, self.log_dir)


def hparams(engine: Engine) -> dict[str, Any]:
    """The run's settings TensorBoard can show: numbers, strings and booleans (None as text)."""
    values: dict[str, Any] = {
        "max_epochs": engine.max_epochs,
        "precision": str(engine.precision),
        "model": type(engine.model).__name__,
    }
    for key, value in engine.args.items():
        if isinstance(value, bool | int | float | str):
            values[key] = value
        elif value is None:
            values[key] = "None"
    return values


def _summary_writer_class() -> type[SummaryWriter]:
    try:
        # torch.utils.tensorboard imports tensorboard itself; importing it first gives our
        # message rather than torch's even when torch's module is already loaded.
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ConfigError(MISSING) from e
    return SummaryWriter


def _read_png(path: Path) -> Any:
    from torchvision.io import ImageReadMode, decode_png, read_file

    # matplotlib writes RGBA; TensorBoard shows RGB.
    return decode_png(read_file(str(path)), mode=ImageReadMode.RGB)
