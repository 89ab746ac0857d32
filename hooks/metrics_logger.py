"""MetricsLogger: ``metrics.csv``, one row per epoch, rewritten atomically from the history."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_csv
from trainer.run_files import METRICS_CSV

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")

# Leading columns, in the order users expect; the rest follow sorted (metric_columns).
_FIRST = ["epoch", "step", "lr", "train/loss", "train/acc", "val/loss", "val/acc", "val/acc_top5"]


class MetricsLogger(Hook):
    """Writes ``out_dir/metrics.csv`` from ``engine.state.history`` at each epoch end.

    Rewriting the whole (small) file keeps it consistent after a resume, and atomic.

    Args:
        out_dir: the run folder.

    Example:
        >>> Engine(model, data, hooks=[MetricsLogger("runs/a")]).fit()
    """

    order = 20

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / METRICS_CSV

    @rank_zero_only  # rank 0 writes the files under DDP
    def on_train_epoch_end(self, engine: Engine) -> None:
        history = engine.state.history
        header = metric_columns(history)
        rows = [[_fmt(row.get(k)) for k in header] for row in history]
        try:
            atomic_write_csv(self.path, header, rows)
        except OSError as e:
            log.warning("could not write %s (%s); training goes on", self.path, e)


def metric_columns(history: Iterable[Mapping[str, Any]]) -> list[str]:
    """The columns of ``metrics.csv`` for ``history``: the usual ones first, the rest sorted."""
    keys = {k for row in history for k in row}
    return [k for k in _FIRST if k in keys] + sorted(keys - set(_FIRST))


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"
