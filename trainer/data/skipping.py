"""Images that fail to decode during training: skipped, counted, reported, bounded.

A loader's dataset returns a ``Skipped`` marker instead of raising; ``collate_skipping``
drops the markers from the batch (the batch shrinks by one per bad image) and sends them
back with it, since workers share no counters; ``SkippingLoader`` hands the engine the plain
batch and records the markers in the data's ``BadImages``, which stops the run with a
``DataError`` once more than ``max_bad_fraction`` of all images proved unusable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, default_collate

from trainer.errors import DataError

logger = logging.getLogger("trainer.data")


@dataclass(frozen=True)
class Skipped:
    """What a loader's dataset returns for an image it cannot decode."""

    path: str
    reason: str


def collate_skipping(
    items: Sequence[Any], collate: Callable[[list[Any]], Any] = default_collate
) -> tuple[Any, list[Skipped]]:
    """``(batch of the good items or None, the Skipped markers)``."""
    good = [x for x in items if not isinstance(x, Skipped)]
    bad = [x for x in items if isinstance(x, Skipped)]
    return (collate(good) if good else None), bad


class BadImages:
    """The unusable images of a dataset: found at start and met during training.

    Args:
        root: the data, for the messages.
        total: images in all splits, the unusable ones included.
        found: ``(path, reason)`` of the images the start-up check rejected.
        max_fraction: the largest share of unusable images tolerated.

    Attributes:
        skipped: path -> reason of each image skipped during training, first time first.
        events: skips in all, the same image once per time it was drawn.
        on_change: called (by ``SkippingLoader``, after a pass over a loader) when images
            were skipped during that pass; e.g. to rewrite ``data_report.json``.
    """

    def __init__(
        self, root: Path, total: int, found: Sequence[tuple[Path, str]], max_fraction: float
    ) -> None:
        self.root, self.total, self.max_fraction = root, total, max_fraction
        self.found = {str(p): r for p, r in found}
        self.skipped: dict[str, str] = {}
        self.events = 0
        self.on_change: Callable[[], None] | None = None
        self._reported = 0

    @property
    def count(self) -> int:
        """Distinct unusable images so far."""
        return len(self.found) + len(self.skipped)

    def record(self, skipped: Sequence[Skipped]) -> None:
        """Count ``skipped``; raise DataError when the unusable share goes over the limit."""
        for s in skipped:
            self.events += 1
            if s.path not in self.skipped and s.path not in self.found:
                self.skipped[s.path] = s.reason
                logger.warning("Skipping %s: it cannot be decoded (%s).", s.path, s.reason)
        fraction = self.count / max(self.total, 1)
        if fraction > self.max_fraction:
            names = "; ".join(
                f"{p} ({r})" for p, r in [*self.found.items(), *self.skipped.items()][:5]
            )
            raise DataError(
                f"{self.count} of {self.total} images under {self.root} ({fraction:.1%}) cannot "
                f"be decoded ({len(self.skipped)} of them found during training), more than "
                f"max_bad_fraction={self.max_fraction}. First ones: {names}. Remove or replace "
                "the broken files, or raise --max-bad-fraction to skip them."
            )

    def flush(self) -> None:
        """Call ``on_change`` if images were skipped since the last call."""
        if self.events != self._reported and self.on_change is not None:
            self._reported = self.events
            self.on_change()


class SkippingLoader:
    """A DataLoader whose ``collate_fn`` is ``collate_skipping``, yielding plain batches.

    Everything else (``len``, ``sampler``, ``dataset``, ``batch_size``) is the loader's.

    Args:
        loader: the wrapped loader.
        bad: where the skipped images are recorded.
    """

    def __init__(self, loader: DataLoader[Any], bad: BadImages) -> None:
        self.loader = loader
        self.bad = bad

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        for batch, skipped in self.loader:
            if skipped:
                self.bad.record(skipped)
            if batch is not None:  # every image of the batch failed: nothing to train on
                yield batch
        self.bad.flush()
