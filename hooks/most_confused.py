"""MostConfusedHook: ``most_confused.csv``, the class pairs the model mixes up most, after
each validation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hooks.render.plots import confused_pairs
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_csv
from trainer.run_files import MOST_CONFUSED_CSV

if TYPE_CHECKING:
    from trainer.engine import Engine

HEADER = ["epoch", "step", "true_index", "true", "predicted_index", "predicted", "count", "share"]


def most_confused(
    counts: Any, classes: Sequence[str], top: int = 20, min_count: int = 1
) -> list[dict[str, Any]]:
    """The off-diagonal cells of a confusion matrix holding at least ``min_count`` images,
    the ``top`` largest first, like fastai's ``most_confused(min_val)``.

    Args:
        counts: the matrix (rows = true class), a tensor or array of counts.
        classes: class names by index.
        top: pairs kept at most.
        min_count: the fewest images a pair needs to be listed (at least 1).

    Returns:
        One dict per pair: ``true_index``, ``true``, ``predicted_index``, ``predicted``,
        ``count`` (images of ``true`` predicted as ``predicted``) and ``share`` (that count
        over the true class's images). Ties keep row-major order.

    Example:
        >>> most_confused(np.array([[5, 3], [1, 4]]), ["cat", "dog"])[0]["predicted"]
        'dog'
    """
    counts = np.asarray(counts, dtype=np.int64)
    support = counts.sum(axis=1)
    return [
        {"true_index": t, "true": classes[t], "predicted_index": p, "predicted": classes[p],
         "count": c, "share": round(c / int(support[t]), 4)}
        for t, p, c in confused_pairs(counts, top)
        if c >= max(1, min_count)
    ]  # fmt: skip


class MostConfusedHook(Hook):
    """Writes ``most_confused.csv``: the class pairs most often mistaken for one another.

    It reads the matrix the engine already counted (``engine.state.confusion_matrix``, summed
    over ranks under DDP): no second pass over the logits. The file holds the latest
    validation's pairs, largest first, with the columns ``epoch`` (from 0, as in
    ``metrics.csv``), ``step``, ``true_index``, ``true``, ``predicted_index``, ``predicted``,
    ``count`` and ``share`` (of the true class's validation images); it is rewritten after
    each validation. The sanity check is left out; rank 0 writes, on the artefact writer.

    Args:
        out_dir: the run folder.
        top: pairs kept at most.
        min_count: the fewest images a pair needs to be listed.

    Attributes:
        pairs: the latest validation's pairs, as ``most_confused`` returns them.

    Example:
        >>> hook = MostConfusedHook("runs/a", top=10, min_count=2)
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.pairs[0]  # {"true": "cat", "predicted": "dog", "count": 7, "share": 0.14, ...}
    """

    order = 40

    def __init__(self, out_dir: str | os.PathLike[str], top: int = 20, min_count: int = 1) -> None:
        if top < 1:
            raise ValueError(f"top must be >= 1, got {top}")
        self.path = Path(out_dir) / MOST_CONFUSED_CSV
        self.top = top
        self.min_count = min_count
        self.pairs: list[dict[str, Any]] = []

    @rank_zero_only
    def on_validation_epoch_end(self, engine: Engine) -> None:
        s = engine.state
        if s.phase != "val" or s.confusion_matrix is None:
            return
        self.pairs = most_confused(
            s.confusion_matrix.numpy(), list(engine.data.classes), self.top, self.min_count
        )
        rows = [[s.epoch, s.step, *(p[k] for k in HEADER[2:])] for p in self.pairs]
        path = self.path
        engine.artifacts.submit(lambda: atomic_write_csv(path, HEADER, rows), path, replace=True)
