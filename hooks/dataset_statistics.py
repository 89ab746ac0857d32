"""DatasetStatisticsHook: class distribution per split, imbalance and thin classes, at fit start."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hooks.render.plots import plot_class_distribution, save_png
from hooks.render.tables import MAX_NAMED_FEW, MAX_ROWS, class_distribution_table
from hooks.render.verbosity import Verbosity, check_verbosity
from trainer.artifacts import guarded
from trainer.data.label_sets import labels_per_image
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_csv, atomic_write_json
from trainer.run_files import CLASS_DISTRIBUTION_CSV, DATASET_STATS_JSON, PLOTS

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")

CSV_NAME = CLASS_DISTRIBUTION_CSV


class DatasetStatisticsHook(Hook):
    """Prints and saves how the images spread over classes and splits, once, at fit start.

    Multi-label data: the counts are of labels (an image counts once per label it carries),
    and ``labels_per_image`` (per split, how many images carry 0, 1, 2, ... labels) is added
    to the JSON and printed under the table.

    Writes ``dataset_stats.json``::

        {"splits": {"train": {"counts": {name: n}, "total": N, "imbalance_ratio": r}, ...},
         "few_images": [{"class_idx": i, "class_name": name, "count": n}, ...]}

    ``class_distribution.csv`` (``class_idx``, ``class_name``, then one count column per split)
    and ``plots/class_distribution.png``. Splits with no image (often ``test``) are left out.
    ``imbalance_ratio`` is the largest class count over the smallest, None when a class has
    no image in that split. Classes with fewer than ``few_threshold`` training images are
    logged as warnings and listed under the table (the first ``MAX_NAMED_FEW`` by name, then
    a count). Past ``max_rows`` classes the table shows the smallest and largest classes
    (by the first split's count) with the totals; every class is in the CSV and JSON.

    Args:
        out_dir: the run folder.
        few_threshold: a class with fewer training images than this is flagged.
        console: where the table goes; a fresh ``rich.console.Console()`` (stdout) by default.
        max_rows: the table shows at most this many classes.
        verbosity: "quiet" leaves the table out (the warnings stay); see ``hooks.render.verbosity``.

    Attributes:
        stats: the dict written to ``dataset_stats.json``.
        figure: the class distribution figure.

    Example:
        >>> hook = DatasetStatisticsHook("runs/a", few_threshold=20)
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.stats["splits"]["train"]["imbalance_ratio"]
    """

    order = 30

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        few_threshold: int = 10,
        console: Console | None = None,
        max_rows: int = MAX_ROWS,
        verbosity: Verbosity = "verbose",
    ) -> None:
        self.out_dir = Path(out_dir)
        self.few_threshold = few_threshold
        self.console = console
        self.max_rows = max_rows
        self.verbosity = check_verbosity(verbosity)
        self.stats: dict[str, Any] = {}
        self.figure: Figure | None = None

    @rank_zero_only  # rank 0 writes the files under DDP
    def on_fit_start(self, engine: Engine) -> None:
        data: Any = engine.data
        classes: list[str] = list(data.classes)
        split_counts = {
            split: list(counts)
            for split, counts in getattr(data, "class_counts", {}).items()
            if sum(counts) > 0
        }
        if not split_counts:
            log.info("DatasetStatisticsHook: data has no class_counts; nothing to report")
            return
        self.stats = dataset_stats(classes, split_counts, self.few_threshold)
        per_image = labels_per_image_by_split(data)
        if per_image:  # multi-label: the counts are labels; and how many each image carries
            self.stats["labels_per_image"] = per_image
        few = self.stats["few_images"]
        for item in few[:MAX_NAMED_FEW]:
            log.warning(
                "class %d (%s) has only %d training image(s), fewer than %d",
                item["class_idx"],
                item["class_name"],
                item["count"],
                self.few_threshold,
            )
        if len(few) > MAX_NAMED_FEW:
            log.warning(
                "%d more classes have fewer than %d training images (few_images in %s)",
                len(few) - MAX_NAMED_FEW,
                self.few_threshold,
                self.out_dir / DATASET_STATS_JSON,
            )
        if self.verbosity != "quiet":
            from rich.console import Console  # deferred: only needed once a fit starts

            table = class_distribution_table(classes, split_counts, self.stats,
                                             self.few_threshold, CSV_NAME, self.max_rows)  # fmt: skip
            (self.console or Console()).print(table)
            for split, hist in per_image.items():
                shown = ", ".join(f"{k}: {n}" for k, n in hist.items())
                (self.console or Console()).print(f"{split} images by labels carried: {shown}")
        path = self.out_dir / DATASET_STATS_JSON
        with guarded(path):
            atomic_write_json(path, self.stats)
        path = self.out_dir / CSV_NAME
        with guarded(path):
            rows = [[i, c, *(n[i] for n in split_counts.values())] for i, c in enumerate(classes)]
            atomic_write_csv(path, ["class_idx", "class_name", *split_counts], rows)
        path = self.out_dir / PLOTS / "class_distribution.png"

        def job() -> None:  # on the artefact writer, while the first epoch trains
            self.figure = plot_class_distribution(classes, split_counts)
            save_png(self.figure, path)

        engine.artifacts.submit(job, path)


def labels_per_image_by_split(data: Any) -> dict[str, dict[str, int]]:
    """Multi-label data (a ``label_table``): per split, how many images carry 0, 1, 2, ...
    labels (keys as text, for JSON); ``{}`` for single-label data."""
    table = getattr(data, "label_table", None)
    if table is None:
        return {}
    splits = {"train": data.train_samples, "val": data.val_samples, "test": data.test_samples}
    return {
        split: {str(k): n for k, n in labels_per_image(samples.targets, table).items()}
        for split, samples in splits.items()
        if len(samples)
    }


def dataset_stats(
    classes: list[str], split_counts: dict[str, list[int]], few_threshold: int
) -> dict[str, Any]:
    """The ``dataset_stats.json`` document from per-split, per-class-index counts."""
    splits: dict[str, Any] = {}
    for split, counts in split_counts.items():
        low, high = min(counts), max(counts)
        splits[split] = {
            "counts": dict(zip(classes, counts, strict=True)),
            "total": sum(counts),
            "imbalance_ratio": round(high / low, 4) if low > 0 else None,
        }
    train = split_counts.get("train", [])
    few = [
        {"class_idx": i, "class_name": classes[i], "count": n}
        for i, n in enumerate(train)
        if n < few_threshold
    ]
    return {"splits": splits, "few_images": few}
