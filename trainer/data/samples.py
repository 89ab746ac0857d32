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
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

_SEP = b"\0"
_ENCODING, _ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


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
        # Each path is followed by a NUL (which no path holds): all of them decode at once.
        encoded = [os.fsencode(p) + _SEP for p, _ in samples]
        self._offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), np.uint8)
        self.targets: np.ndarray = np.array([int(t) for _, t in samples], np.int64)

    @classmethod
    def from_arrays(
        cls,
        blob: np.ndarray,
        offsets: np.ndarray,
        targets: np.ndarray,
        classes: int | None = None,
    ) -> SampleArray:
        """The array made of what ``arrays`` returned (e.g. read back from a file).

        Raises:
            ValueError: the arrays do not belong together (each path non-empty and ending in
                the NUL at its end offset), or a target is not in ``range(classes)``.
        """
        ends = offsets[1:]
        if (
            len(offsets) != len(targets) + 1
            or offsets[0] != 0
            or (len(targets) and offsets[-1] != len(blob))
            or (np.diff(offsets) < 2).any()
            or (len(targets) and (blob[ends - 1] != 0).any())
            or (classes is not None and ((targets < 0) | (targets >= classes)).any())
        ):
            raise ValueError("blob, offsets and targets do not belong together")
        new = cls.__new__(cls)
        new._blob, new._offsets = blob.astype(np.uint8, copy=False), offsets.astype(np.int64)
        new.targets = targets.astype(np.int64)
        return new

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(blob, offsets, targets)``: everything it holds, for ``from_arrays``."""
        return self._blob, self._offsets, self.targets

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, index: int) -> str:
        """The path of sample ``index``, as a string."""
        start, end = self._offsets[index], self._offsets[index + 1] - 1
        return os.fsdecode(self._blob[start:end].tobytes())

    def paths(self) -> list[str]:
        """Every path, as strings, decoded at once (no ``Path`` object per sample)."""
        return self.encoded_paths().decode(_ENCODING, _ERRORS).split("\0") if len(self) else []

    def encoded_paths(self) -> bytes:
        """The paths, file-system encoded and NUL-separated (``check_cache.encode_paths``)."""
        return self._blob[:-1].tobytes()

    def select(self, keep: np.ndarray) -> SampleArray:
        """The samples where the boolean array ``keep`` is True, in order."""
        paths = self.paths()
        return SampleArray([(paths[i], int(self.targets[i])) for i in np.flatnonzero(keep)])

    def __getitem__(self, index: int) -> tuple[Path, int]:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        index %= len(self)
        return Path(self.path(index)), int(self.targets[index])

    def __iter__(self) -> Iterator[tuple[Path, int]]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        """Equal to another sequence of the same ``(path, class index)`` pairs (a list too)."""
        if isinstance(other, SampleArray):
            return bool(
                np.array_equal(self.targets, other.targets)
                and np.array_equal(self._offsets, other._offsets)
                and np.array_equal(self._blob, other._blob)
            )
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    def __add__(self, other: Sequence[tuple[Path, int]]) -> list[tuple[Path, int]]:
        """A list of both, as two lists of samples would add up."""
        return [*self, *other]

    def __radd__(self, other: Sequence[tuple[Path, int]]) -> list[tuple[Path, int]]:
        return [*other, *self]

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, compared by content

    def __repr__(self) -> str:
        return f"SampleArray({len(self)} samples)"

    @property
    def nbytes(self) -> int:
        """Memory the arrays take."""
        return self._offsets.nbytes + self._blob.nbytes + self.targets.nbytes
