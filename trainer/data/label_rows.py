"""A label file's rows, and the checks the single- and multi-label readers share
(``trainer.data.labelfile``, ``trainer.data.label_sets``)."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from trainer.data.scan import TreeScan
from trainer.errors import DataError

logger = logging.getLogger("trainer.data")

SPLIT_KEY = "split"


@dataclass(frozen=True)
class Row:
    """One row of a label file: the image, its label, its split (None: to be split), and
    where it is written (``file:line``). A multi-label row's label set is ``labels`` (its
    ``label`` is then the set joined with ";", for messages); None in a single-label row."""

    path: Path
    label: str
    split: str | None
    where: str
    labels: tuple[str, ...] | None = None


def drop_missing(
    path: Path, rows: list[Row], stats: list[os.stat_result | None], max_bad_fraction: float
) -> tuple[list[Row], list[tuple[Row, str]]]:
    """The rows whose image exists, and the others with why (too many: DataError)."""
    missing = [(r, f"{why} (listed at {r.where})") for r, st in zip(rows, stats, strict=True)
               if (why := unusable(st)) is not None]  # fmt: skip
    check_missing(path, rows, missing, max_bad_fraction)
    gone = {r for r, _ in missing}
    return [r for r in rows if r not in gone], missing


def check_has_val(path: Path, scan: TreeScan, rows: list[Row]) -> None:
    """A label file whose rows all name their split must name some val rows."""
    if not scan.val and not any(r.split is None for r in rows):
        raise DataError(
            f"{path} has no val rows: every row names its split, and none is val. Mark some "
            f"rows {SPLIT_KEY}=val, or leave the split empty to have them split automatically."
        )


def unusable(st: os.stat_result | None) -> str | None:
    """Why a listed image with this ``stat`` is left out unopened; None when it is a file."""
    if st is None:
        return "file not found"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a folder, FIFO, socket or device): skipped unopened"
    return None


def check_missing(
    path: Path, rows: list[Row], missing: list[tuple[Row, str]], max_bad_fraction: float
) -> None:
    if not missing:
        return
    shown = "; ".join(f"{r.where}: {r.path}" for r, _ in missing[:5])
    fraction = len(missing) / len(rows)
    if fraction > max_bad_fraction:
        raise DataError(
            f"{len(missing)} of the {len(rows)} images listed in {path} ({fraction:.1%}) do not "
            f"exist, more than max_bad_fraction={max_bad_fraction}. First ones: {shown}. Fix "
            "the paths (they are relative to the label file's folder), or raise "
            "--max-bad-fraction to skip them."
        )
    logger.warning(
        "Skipping %d missing image(s) of %d listed in %s: %s%s",
        len(missing), len(rows), path, shown, " ..." if len(missing) > 5 else "",
    )  # fmt: skip
