"""SamplerDistributionHook: which classes training really saw each epoch, against what was planned."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hooks.render.plots import plot_shares, save_png
from hooks.render.tables import MAX_ROWS, sampler_table
from hooks.render.verbosity import Verbosity, check_verbosity
from trainer.artifacts import guarded
from trainer.distributed import all_reduce_sum, is_global_zero
from trainer.hook import Hook
from trainer.io import atomic_write_csv
from trainer.run_files import PLOTS, SAMPLER_DISTRIBUTION_CSV

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

    from trainer.engine import Engine

# A draw this many standard deviations from the plan for some class is "beyond chance"
# (chance alone does it about 6 times in 100,000 per class and epoch).
CHANCE_SD = 4.0

HEADER = ["epoch", "class_idx", "class_name", "dataset_count", "expected", "drawn"]


class SamplerDistributionHook(Hook):
    """Counts the training targets per class each epoch and compares them with the plan.

    ``drawn`` is counted from the batches themselves (on the device, read once per epoch), so
    it is right for any sampler or loader. ``expected`` is what the
    ``TrackingWeightedRandomSampler`` weights predict (``engine.data.sampler``), or the
    dataset count when there is no such sampler (plain shuffling shows each image once).
    Each epoch: a rich table, ``sampler_distribution.csv`` with one row per (epoch, class),
    ``HEADER`` columns and epochs from 0 as in ``metrics.csv``, and
    ``plots/sampler_distribution.png`` (dataset, expected and drawn share of the latest epoch).
    Under DDP the counts are summed over ranks (all ranks run the hook) and rank 0 writes.

    The table is printed when it tells something: every epoch under a weighted sampler
    (balanced or manual), on the first epoch of a fit, and when a class's draw is further
    from its expected count than chance explains (more than ``CHANCE_SD`` standard
    deviations, ``largest_gap``). Otherwise one line says so, once. ``verbosity="verbose"``
    prints the table every epoch, ``"quiet"`` never.

    Args:
        out_dir: the run folder.
        console: where the table goes; a fresh ``rich.console.Console()`` (stdout) by default.
        max_rows: the table shows at most this many classes, those furthest from expected.
        verbosity: "quiet", "normal" or "verbose" (``hooks.render.verbosity``).

    Attributes:
        rows: every CSV row so far; kept in checkpoints so a resumed run continues the file.
        figure: the latest figure.

    Example:
        >>> hook = SamplerDistributionHook("runs/a")
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.rows[-1]  # [epoch, class_idx, class_name, dataset_count, expected, drawn]
    """

    order = 40

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        console: Console | None = None,
        max_rows: int = MAX_ROWS,
        verbosity: Verbosity = "normal",
    ) -> None:
        self.out_dir = Path(out_dir)
        self.console = console
        self.max_rows = max_rows
        self.verbosity = check_verbosity(verbosity)
        self._table_shown = False  # in this fit
        self._line_shown = False
        self.rows: list[list[Any]] = []
        self.figure: Figure | None = None
        self._drawn: torch.Tensor | None = None
        self._class_ids: torch.Tensor | None = None

    def on_fit_start(self, engine: Engine) -> None:
        self._table_shown = self._line_shown = False

    def on_train_epoch_start(self, engine: Engine) -> None:
        n = engine.data.num_classes
        self._drawn = torch.zeros(n, dtype=torch.int64, device=engine.device)
        self._class_ids = torch.arange(n, device=engine.device)

    def on_train_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        if self._drawn is None or self._class_ids is None:
            return
        # A compare-and-sum rather than bincount: bincount reads the device on CUDA to size
        # its output, which would stall every step.
        targets = outputs["targets"]
        if targets.ndim == 2:  # multi-label: each drawn image counts once per label it carries
            self._drawn += (targets > 0.5).sum(0)
            return
        self._drawn += (targets.unsqueeze(1) == self._class_ids).sum(0)

    def on_train_epoch_end(self, engine: Engine) -> None:
        if self._drawn is None:
            return
        data: Any = engine.data
        classes: list[str] = list(data.classes)
        # Under DDP each rank drew its share: the table shows the global draw.
        drawn = all_reduce_sum(self._drawn).tolist()  # the one host read of the epoch
        self._drawn = None
        dataset = _train_counts(data)
        sampler = getattr(data, "sampler", None)
        expected = [float(c) for c in dataset]
        for attr in ("global_expected_counts", "expected_counts"):
            if sampler is not None and hasattr(sampler, attr):
                expected = [float(e) for e in getattr(sampler, attr)]
                break
        epoch = engine.state.epoch
        # A resume from an earlier checkpoint redoes epochs: replace, never duplicate, rows.
        self.rows = [r for r in self.rows if r[0] < epoch]
        self.rows += [
            [epoch, i, name, dataset[i], round(expected[i], 3), drawn[i]]
            for i, name in enumerate(classes)
        ]
        if not is_global_zero():
            return  # rank 0 prints and writes
        self.print_epoch(epoch, classes, dataset, expected, drawn, weighted=_weighted(sampler))
        path = self.out_dir / SAMPLER_DISTRIBUTION_CSV
        with guarded(path):
            atomic_write_csv(path, HEADER, self.rows)
        path = self.out_dir / PLOTS / "sampler_distribution.png"

        def job() -> None:  # on the artefact writer; every argument is a fresh list
            self.figure = plot_shares(classes, dataset, expected, drawn, epoch)
            save_png(self.figure, path)

        engine.artifacts.submit(job, path, replace=True)

    def print_epoch(
        self,
        epoch: int,
        classes: list[str],
        dataset: list[int],
        expected: list[float],
        drawn: list[int],
        weighted: bool,
    ) -> None:
        if self.verbosity == "quiet":
            return
        from rich.console import Console  # deferred: only needed once a fit starts

        console = self.console or Console()
        gap = largest_gap(expected, drawn)
        if self.verbosity == "verbose" or weighted or not self._table_shown or gap > CHANCE_SD:
            console.print(sampler_table(epoch, classes, dataset, expected, drawn, self.max_rows))
            self._table_shown = True
        elif not self._line_shown:
            # Said once: a table identical to the last one every epoch buries the epoch lines.
            console.print(
                f"sampler: epoch {epoch + 1} drew as planned (largest gap {gap:.1f} sd); its "
                f"table shows again only if a draw departs from the plan beyond chance",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            self._line_shown = True

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [list(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [list(r) for r in state.get("rows", [])]


def _weighted(sampler: Any) -> bool:
    """Whether the sampler draws by weights (balanced or manual), not each image once."""
    return sampler is not None and getattr(sampler, "mode", "none") != "none"


def largest_gap(expected: list[float], drawn: list[int]) -> float:
    """The largest ``|drawn - expected|`` over the classes, in standard deviations of a
    multinomial draw of the same total (at least 1 image, so a gap of one image is never
    more than 1 sd)."""
    total = sum(drawn)
    planned = sum(expected)
    if total == 0 or planned <= 0:
        return 0.0
    gaps = []
    for e, d in zip(expected, drawn, strict=True):
        p = e / planned
        sd = max(math.sqrt(total * p * (1 - p)), 1.0)
        gaps.append(abs(d - p * total) / sd)
    return max(gaps, default=0.0)


def _train_counts(data: Any) -> list[int]:
    counts = getattr(data, "class_counts", {}).get("train")
    if counts is not None:
        return [int(c) for c in counts]
    counts = [0] * data.num_classes
    for _, t in getattr(data, "train_samples", []):
        counts[t] += 1
    return counts
