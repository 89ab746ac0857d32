"""``CsvLog``: a CSV file that grows row by row during a run and is cut back on resume.

Not a hook: ``PerClassMetricsHook`` (``per_class.csv``) and ``StepLogHook`` (``steps.csv``)
use it. Rows are appended on the run's artefact writer, never on the training thread, so the
file grows in O(rows) whatever its size. When a fit starts, the rows after the step it starts
from are dropped (a resume from the last epoch end redoes what came after it, so its rows come
back once) and so is a row a killed run left half-written; the rest is rewritten atomically.

Example:
    >>> log = CsvLog("runs/a/steps.csv", ["step", "loss"])
    >>> log.start(step=0)  # at fit start: a fresh file
    >>> log.append(engine.artifacts, [[50, 0.93]])
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.artifacts import ArtifactWriter, guarded
from trainer.io import atomic_write_csv

log = logging.getLogger("trainer.hooks")


class CsvLog:
    """An appended CSV file with a ``step`` column.

    Args:
        path: the file.
        header: its columns; one of them is "step".
    """

    def __init__(self, path: str | os.PathLike[str], header: Sequence[str]) -> None:
        self.path = Path(path)
        self.header = list(header)
        self._step_col = self.header.index("step")

    def start(self, step: int) -> None:
        """At fit start: keep the whole rows up to ``step`` (none for a new run)."""
        with guarded(self.path):
            kept = [row for row in self.read() if float(row[self._step_col]) <= step]
            if kept or self.path.exists() or self.path.is_symlink():  # a link: replaced
                atomic_write_csv(self.path, self.header, kept)

    def read(self) -> list[list[str]]:
        """The file's whole rows (as strings): a row cut short by a crash is left out."""
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except FileNotFoundError:
            return []
        if not rows or rows[0] != self.header:
            log.warning("%s has other columns than %s; starting it afresh", self.path, self.header)
            return []
        return [
            row for row in rows[1:] if len(row) == len(self.header) and _number(row[self._step_col])
        ]

    def append(self, writer: ArtifactWriter, rows: list[list[Any]]) -> None:
        """Append ``rows`` on the artefact writer (the header first, if the file is new)."""
        path, header = self.path, self.header

        def job() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", newline="", encoding="utf-8") as f:
                out = csv.writer(f)
                if f.tell() == 0:
                    out.writerow(header)
                out.writerows(rows)

        writer.submit(job, path)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
