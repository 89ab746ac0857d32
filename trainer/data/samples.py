"""SampleArray: ``(path, class index)`` samples in numpy arrays that loader workers share.

A list of ``(Path, int)`` tuples costs ~300 bytes of Python objects per sample, and every
loader worker that reads it touches their reference counts, which copies the pages they
live on into the worker: per-worker memory then grows with the dataset (the classic
"DataLoader memory leak", pytorch/pytorch#13246). Here the paths are one byte buffer with
offsets and the labels an int64 array: no Python object per sample, so forked workers share
them with the main process, page for page, however large the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


class SampleArray(Sequence[tuple[Path, int]]):
    """An immutable sequence of ``(path, class index)`` held in three numpy arrays.

    Args:
        samples: the ``(path, class index)`` pairs.

    Example:
        >>> s = SampleArray([(Path("a.jpg"), 0), (Path("b.png"), 2)])
        >>> s.path(1), s[1], s.targets.tolist()
        ('b.png', (PosixPath('b.png'), 2), [0, 2])
    """

    def __init__(self, samples: Sequence[tuple[str | os.PathLike[str], int]]) -> None:
        encoded = [os.fsencode(p) for p, _ in samples]
        self._offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), np.uint8)
        self.targets: np.ndarray = np.array([int(t) for _, t in samples], np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, index: int) -> str:
        """The path of sample ``index``, as a string."""
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.fsdecode(self._blob[start:end].tobytes())

    def __getitem__(self, index: int) -> tuple[Path, int]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        index %= len(self)
        return Path(self.path(index)), int(self.targets[index])

    def __iter__(self) -> Iterator[tuple[Path, int]]:
        for i in range(len(self)):
            yield self[i]

    @property
    def nbytes(self) -> int:
        """Memory the arrays take."""
        return self._offsets.nbytes + self._blob.nbytes + self.targets.nbytes
