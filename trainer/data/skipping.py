"""Images that fail to decode during training: skipped, counted, reported, bounded.

A loader's dataset returns a ``Skipped`` marker instead of raising; ``collate_skipping``
drops the markers from the batch (the batch shrinks by one per bad image) and sends them
back with it, since workers share no counters; ``SkippingLoader`` hands the engine the plain
batch and records the markers in the data's ``BadImages``, which stops the run with a
``DataError`` once more than ``max_bad_fraction`` of all images proved unusable.

A training batch whose images all failed is not left out: every rank of a DDP run must take
the same number of steps, or the others would wait for it in the gradient all-reduce. The
training loader draws replacements instead (``SkippingLoader.replace``): for each failed
image, the next sample in dataset order that decodes, under the failed draw's seed, so a
resumed run draws the same ones.

An ``indexed`` loader also says which samples each batch holds: its dataset
appends each sample's index to the item, and the loader strips it from the batch into
``indices`` before yielding, so the skipped images and the replacements are accounted for
(the label-issue scores of training; the top losses and mistakes of validation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from trainer.errors import DataError

logger = logging.getLogger("trainer.data")


@dataclass(frozen=True)
class Skipped:
    """What a loader's dataset returns for an image it cannot decode."""

    path: str
    reason: str
    key: Any = None  # what the dataset was asked for: an index or ``(index, seed)``


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

    A batch with a ``bind`` method (``--decode gpu``'s ``EncodedBatch``) is handed this loader
    through it: images that fail to decode on the device are recorded here, and replaced here.

    Args:
        loader: the wrapped loader.
        bad: where the skipped images are recorded.
        replace_empty: a batch whose images all failed is replaced (``replace``) rather than
            left out, so the loader yields ``len(loader)`` batches (training, where DDP ranks
            must step together); evaluation leaves it out.
        indexed: name each batch's samples in ``indices``: a dataset with a ``with_index``
            attribute (``ImageListDataset``) is set to return each sample's index third,
            which is stripped from the batch; an ``EncodedBatch`` names them in its keys.

    Attributes:
        indices: with ``indexed``, the dataset indices (a CPU int64 tensor) of the samples of
            the batch last yielded, in batch order (for an ``EncodedBatch``: from its keys,
            as the loader made it; the device may still drop images that fail there, which
            shortens the batch). None before the first batch or without ``indexed``.
    """

    def __init__(
        self,
        loader: DataLoader[Any],
        bad: BadImages,
        replace_empty: bool = False,
        indexed: bool = False,
    ) -> None:
        self.loader = loader
        self.bad = bad
        self.replace_empty = replace_empty
        self.indexed = indexed
        self.indices: torch.Tensor | None = None
        if indexed and hasattr(loader.dataset, "with_index"):  # before any worker starts
            loader.dataset.with_index = True

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
            if batch is None and self.replace_empty:
                batch = self.replace(skipped)  # indices set there
            elif batch is not None:
                batch = self._take_indices(batch)
            if batch is None:  # every image of the batch failed: nothing to evaluate
                continue
            bind = getattr(batch, "bind", None)
            yield batch if bind is None else bind(self)
        self.bad.flush()

    def replace(self, failed: Sequence[Skipped]) -> Any:
        """A batch standing for one whose images all ``failed``, drawn in this process.

        Each failed image is replaced by the next sample in dataset order (wrapping around)
        that decodes, under the failed draw's seed; the ones met that fail are recorded too.
        The dataset's ``replacement(key)`` serves them where it has one (``--decode gpu``:
        decoded here, so the device has nothing left to fail on), else ``dataset[key]``.

        Raises:
            DataError: no image of the dataset decodes.
        """
        dataset = self.loader.dataset
        draw = getattr(dataset, "replacement", dataset.__getitem__)
        # A pinned batch (CUDA) holds its keys as lists.
        keys = [s.key if isinstance(s.key, (tuple, list)) else (s.key or 0, None) for s in failed]
        n, used, items = len(dataset), {index for index, _ in keys}, []  # type: ignore[arg-type]
        for index, seed in keys:
            for j in range(1, n):
                k = (index + j) % n
                if k in used:
                    continue
                used.add(k)
                item = draw(k if seed is None else (k, seed))
                if not isinstance(item, Skipped):
                    items.append(item)
                    break
                self.bad.record([item])
        if not items:
            raise DataError(
                f"No image under {self.bad.root} could be decoded to stand for a batch whose "
                "images all failed. Replace the broken files listed in the log."
            )
        logger.info("Replaced %d image(s) of a batch whose images all failed.", len(items))
        batch, _ = self.loader.collate_fn(items)
        return self._take_indices(batch)

    def _take_indices(self, batch: Any) -> Any:
        """``batch`` as the engine takes it, its samples' indices kept in ``indices``."""
        if not self.indexed:
            return batch
        keys = getattr(batch, "keys", None)
        if hasattr(batch, "bind") and keys is not None:  # an EncodedBatch: its keys name them
            index = [k[0] if isinstance(k, (tuple, list)) else k for k in keys]
            self.indices = torch.as_tensor(index, dtype=torch.int64)
            return batch
        if not getattr(self.loader.dataset, "with_index", False):
            return batch  # nothing names the samples: ``indices`` stays None
        *batch, index = batch
        self.indices = torch.as_tensor(index, dtype=torch.int64)
        return batch
