"""ImageListDataset: ``(path, class index)`` samples served as transformed uint8 images."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from trainer.data.decode import load_image
from trainer.data.disk_cache import DiskCache, decode_copy
from trainer.data.reduced import ReducedDecode
from trainer.data.samples import SampleArray
from trainer.data.scan import Sample
from trainer.data.skipping import Skipped
from trainer.errors import DataError
from trainer.rng import torch_seeded

# What a loader asks a dataset for: an index, or ``(index, seed)`` from ``SeededDraw``.
SampleKey = int | tuple[int, int]


def split_key(key: SampleKey) -> tuple[int, int | None]:
    """``(index, augmentation seed or None)`` of a sample key."""
    return key if isinstance(key, tuple) else (key, None)


class ImageListDataset(Dataset[tuple[torch.Tensor, int]]):
    """``(path, target)`` samples decoded on demand (or from a RAM cache) and transformed.

    The samples are held in a ``SampleArray``, which forked loader workers share with the
    main process instead of copying it bit by bit.

    A key ``(index, seed)`` (what ``SeededDraw`` yields) runs the transform on torch's
    generator seeded with ``seed``, so the augmentation is the same in any worker; a plain
    index uses the process's own stream.

    Args:
        samples: the ``(path, class index)`` list.
        transform: applied to the uint8 ``(3, H, W)`` image.
        cache: decoded images aligned with ``samples``, or None to read from disk.
        skip_bad: return a ``Skipped`` marker for an image that cannot be decoded (for a
            loader with ``collate_skipping``) instead of raising DataError.
        native: decode with torchvision.io where it applies (see ``load_image``).
        reduced: decode JPEGs at reduced size where the transform's first step allows (see
            ``trainer.data.reduced``; with Pillow, whatever ``native``). Images from ``cache``
            are used as they are.
        with_index: return ``(image, target, index)``, the sample's index in ``samples``
            third, so a batch names its samples (the training loader: ``SkippingLoader``
            strips it into ``indices``).
        disk: read large images from their resized copies there (``--cache disk``, see
            ``trainer.data.disk_cache``), then the whole transform, as from ``cache``.
        label_table: multi-label data: the target is row ``target`` of this ``(K, C)`` table
            (``trainer.data.label_sets``), a multi-hot float vector.
        max_pixels: the pixel budget every file read from disk is held to (``load_image``),
            whatever the start-up check found: a file can change after it.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[torch.Tensor], torch.Tensor],
        cache: Sequence[torch.Tensor] | None = None,
        *,
        skip_bad: bool = False,
        native: bool = True,
        reduced: bool = False,
        with_index: bool = False,
        disk: DiskCache | None = None,
        label_table: torch.Tensor | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.label_table = label_table
        self.samples = samples if isinstance(samples, SampleArray) else SampleArray(samples)
        self.transform = transform
        self.cache = cache
        self.skip_bad = skip_bad
        self.native = native
        self.with_index = with_index
        self.disk = disk if cache is None else None
        self.max_pixels = max_pixels
        self.reduced = ReducedDecode.of(transform, max_pixels) if reduced and cache is None else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int]:
        index, seed = split_key(key)
        path, target = self.samples.path(index), int(self.samples.targets[index])
        # The decode runs on the seeded generator too: a reduced decode draws the crop box.
        with contextlib.nullcontext() if seed is None else torch_seeded(seed):
            try:
                img, transform = self._load(index, path)
            except Exception as e:
                if self.skip_bad:
                    reason = f"{type(e).__name__}: {e}".strip()
                    return Skipped(path, reason, key)  # type: ignore[return-value]
                raise DataError(
                    f"Cannot decode image {path} ({type(e).__name__}: {e}). Remove or replace "
                    "the file, or construct the data with verify=True to skip unreadable files."
                ) from e
            image = transform(img)
        if self.label_table is not None:
            target = self.label_table[target]  # type: ignore[assignment]
        return (image, target, index) if self.with_index else (image, target)  # type: ignore[return-value]

    def _load(
        self, index: int, path: str
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The image, and what remains of the transform to apply to it."""
        if self.cache is not None:
            return self.cache[index], self.transform
        if self.disk is not None:
            copy = self.disk.read(path, self._from_bytes)
            if copy is not None:
                return copy
        if self.reduced is not None:
            return self.reduced(path), self.reduced.rest
        return load_image(path, native=self.native, max_pixels=self.max_pixels), self.transform

    def _from_bytes(
        self, raw: bytes
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        return decode_copy(raw), self.transform  # decoded whole before the transform draws

    @property
    def targets(self) -> list[int]:
        return [int(t) for t in self.samples.targets]
