"""Builders shared by the data tests."""

from __future__ import annotations

from pathlib import Path

from trainer.data import ImageFolderData


def small_data(root: Path, **kwargs: object) -> ImageFolderData:
    """ImageFolderData with 16 px images, batches of 4 and no worker processes, unless given."""
    kwargs.setdefault("img_size", 16)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("workers", 0)
    return ImageFolderData(root, **kwargs)  # type: ignore[arg-type]
