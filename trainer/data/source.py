"""DataSource: what the engine needs from its ``data`` (``ImageFolderData`` is one)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class DataSource(Protocol):
    """Class names and the three loaders. Optional attributes the engine and the hooks use
    when present: ``mean``/``std`` (uint8 images are normalised with them on the device),
    ``img_size`` and ``batch_size`` (predict on files), ``batch_mix`` (MixUp/CutMix)."""

    classes: list[str]
    num_classes: int

    def train_loader(self) -> Iterable[Any]: ...
    def val_loader(self) -> Iterable[Any] | None: ...
    def test_loader(self) -> Iterable[Any] | None: ...
