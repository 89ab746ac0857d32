"""A stand-in for ImageFolderData (tensors in memory), a tiny engine run, and test helpers."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader, TensorDataset

from trainer.engine import Engine
from trainer.hook import Hook
from trainer.io import atomic_write_json
from trainer.models import build_model
from trainer.sampler import TrackingWeightedRandomSampler

CLASSES = ["cat", "dog", "bird"]
TRAIN_COUNTS = [12, 7, 3]
VAL_COUNTS = [5, 4, 3]


def _images(counts: Sequence[int], size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(counts)])
    # Each class a different brightness, so the model learns something and plots differ.
    base = (targets * 60).view(-1, 1, 1, 1)
    noise = torch.randint(0, 60, (len(targets), 3, size, size), generator=g)
    return (base + noise).to(torch.uint8), targets


class StandInData:
    """The attributes of ``ImageFolderData`` the hooks read, over in-memory uint8 tensors.

    Args:
        classes: class names, index order.
        train_counts: training images per class index.
        val_counts: validation images per class index.
        img_size: square image side.
        batch_size: loader batch size (the last val batch is usually short).
        sampler: a TrackingWeightedRandomSampler mode, or None for plain shuffling.
        float_images: yield normalised float images instead of uint8.
    """

    def __init__(
        self,
        classes: Sequence[str] = CLASSES,
        train_counts: Sequence[int] = TRAIN_COUNTS,
        val_counts: Sequence[int] = VAL_COUNTS,
        img_size: int = 16,
        batch_size: int = 5,
        sampler: str | None = "balanced",
        float_images: bool = False,
    ) -> None:
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.idx_to_class = dict(enumerate(self.classes))
        self.num_classes = len(self.classes)
        self.img_size = img_size
        self.batch_size = batch_size
        self.mean = (0.5, 0.4, 0.3)
        self.std = (0.25, 0.2, 0.2)
        self.class_counts = {
            "train": list(train_counts),
            "val": list(val_counts),
            "test": [0] * self.num_classes,
        }
        self.train_x, self.train_y = _images(train_counts, img_size, seed=0)
        self.val_x, self.val_y = _images(val_counts, img_size, seed=1)
        if float_images:
            m = torch.tensor(self.mean).view(1, 3, 1, 1)
            s = torch.tensor(self.std).view(1, 3, 1, 1)
            self.val_x = (self.val_x.float() / 255 - m) / s
            self.train_x = (self.train_x.float() / 255 - m) / s
        self.train_samples = [(Path(f"train/{i}.png"), int(t)) for i, t in enumerate(self.train_y)]
        self.val_samples = [(Path(f"val/{i}.png"), int(t)) for i, t in enumerate(self.val_y)]
        self.sampler = (
            TrackingWeightedRandomSampler(self.train_y.tolist(), self.num_classes, mode=sampler)
            if sampler is not None
            else None
        )

    def train_loader(self) -> DataLoader[Any]:
        ds = TensorDataset(self.train_x, self.train_y)
        if self.sampler is not None:
            return DataLoader(ds, batch_size=self.batch_size, sampler=self.sampler)
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
        )

    def val_dataset(self) -> TensorDataset:
        return TensorDataset(self.val_x, self.val_y)

    def val_loader(self) -> DataLoader[Any]:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size, shuffle=False)

    def test_loader(self) -> None:
        return None

    def labels_mapping(self) -> dict[str, Any]:
        return {
            "class_to_idx": dict(self.class_to_idx),
            "idx_to_class": {str(i): c for i, c in self.idx_to_class.items()},
            "image_size": self.img_size,
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
        }

    def save_labels_mapping(self, path: Any) -> None:
        atomic_write_json(path, self.labels_mapping())


def run_fit(
    hooks: Sequence[Hook], data: StandInData | None = None, epochs: int = 2, **kwargs: Any
) -> Engine:
    """Fit small_cnn on the stand-in data on the CPU (or ``device=``) and return the engine."""
    data = data or StandInData()
    model = build_model("small_cnn", data.num_classes)
    kwargs.setdefault("device", "cpu")
    engine = Engine(
        model,
        data,
        max_epochs=epochs,
        hooks=hooks,
        sanity_steps=2,
        lr=3e-3,
        args={"model": "small_cnn", "img_size": data.img_size},
        **kwargs,
    )
    engine.fit()
    return engine


def png_size(path: Path) -> tuple[int, int]:
    """Decode the PNG fully (not just the header) and return its (width, height)."""
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        return img.size


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=140, force_terminal=False)


def console_text(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def assert_survives_unwritable(
    make_hook: Callable[[Path], Hook], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Point the hook's out_dir at a regular file: the fit must finish and warn, naming it."""
    # A file where the run folder should be defeats mkdir even for root, unlike chmod.
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="trainer.hooks"):
        engine = run_fit([make_hook(blocked)], epochs=1)
    assert len(engine.state.history) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "trainer.hooks"]
    assert warnings, "expected a warning from trainer.hooks"
    assert all(str(blocked) in w for w in warnings)
