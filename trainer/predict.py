"""What ``Engine.predict`` runs: batches from a loader, a folder, or image paths and PIL images.

Images from files or PIL go through the validation transform (``trainer.data.eval_preprocess``)
of the data's ``eval_resize`` (its ``img_size``, ``crop_pct`` and resize mode), as uint8
batches; ``Engine.predict`` then runs them through the engine's evaluation loop
(``Engine.run_eval``), which normalises them on the device.

Test-time augmentation: with ``tta="flip"`` each batch also goes through the model mirrored
(flipped left-right, under the same autocast), and each row is the mean of the two
probabilities; the batch-end hooks get that mean as ``probs`` and the plain ``logits``.

Files are decoded with Pillow (``trainer.data.load_preprocessed``), as the loaders do, large
JPEGs at reduced size as validation decodes them:
torchvision's native decoders have crashed the whole process (a segfault) on malformed files,
where Pillow raises. A file that cannot be decoded is skipped with a warning naming it, and
its row of the result is NaN (see :meth:`PredictBatches.rows`).

Example:
    >>> probs = engine.predict("photos/")            # (N, C), rows in predict_paths order
    >>> probs = engine.predict([Image.open("a.jpg"), "b.png"])
    >>> probs = engine.predict(data.val_loader())    # batches of (images, targets) or images
    >>> probs = engine.predict("photos/", tta="flip")  # each image and its mirror, averaged
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data import IMG_EXTENSIONS, eval_preprocess, image_to_tensor, load_preprocessed
from trainer.data.transforms import EvalResize, check_tta
from trainer.errors import UserError

log = logging.getLogger("trainer")

# A folder, one image path, a list of paths, PIL images or uint8 arrays, or a loader of batches.
PredictSource = str | os.PathLike[str] | Sequence[Any] | Iterable[Any]
DEFAULT_BATCH_SIZE = 32


def predict_paths(folder: str | os.PathLike[str]) -> list[Path]:
    """The images ``Engine.predict(folder)`` reads, in the order of its rows: every file with an
    image extension under ``folder`` (recursively, hidden entries left out), sorted by path."""
    root = Path(folder)
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMG_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class PredictBatches:
    """The batches of a predict source, and the probabilities that come back for them.

    A loader's batches pass as they are. Paths, PIL images and arrays become uint8
    ``(B, 3, S, S)`` batches through the validation transform, ``batch_size`` at a time; a file
    that cannot be decoded is left out of its batch, logged, and listed in ``skipped``.

    Args:
        data: the engine's data; its ``img_size`` (needed for paths and PIL images) and
            ``batch_size`` (the default batch size).
        source: a folder (see :func:`predict_paths`), an image path, a list of image paths,
            PIL images and uint8 arrays (``(H, W)`` or ``(H, W, C)``, RGB), or an iterable of
            batches (``images`` or ``(images, targets, ...)``).
        batch_size: images per batch for paths and PIL images; default the data's, else 32.
        tta: "flip" averages each image's probabilities with its mirror's; "none" (default).
        engine: the engine whose ``eval_model`` (under its ``autocast``) scores the mirrored
            batches; needed for ``tta="flip"``.

    Attributes:
        skipped: ``(row, path, reason)`` of each image that could not be decoded, once iterated.
        probs: each batch's probabilities, as ``score`` kept them.

    Raises:
        UserError: a path that does not exist, a folder with no image, a ``batch_size`` below
            1, paths with data that has no ``img_size``, or an unknown ``tta``.
    """

    def __init__(
        self,
        data: Any,
        source: PredictSource,
        batch_size: int | None = None,
        *,
        tta: str = "none",
        engine: Any = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.tta, self.engine = check_tta(tta), engine
        if tta == "flip" and engine is None:
            raise ValueError("tta='flip' needs the engine that runs the mirrored batches")
        self.skipped: list[tuple[int, Path, str]] = []
        self.multilabel = getattr(data, "task", "multiclass") == "multilabel"  # sigmoid
        self.probs: list[torch.Tensor] = []
        self.items: list[Any] | None = None  # None: a loader
        self.loader: Any = ()
        if _is_loader(source):
            self.loader = source
            return
        self.items = _items(source)
        img_size = getattr(data, "img_size", None)
        if not isinstance(img_size, int):
            raise UserError(
                "predict on paths or PIL images needs the validation image size, and engine.data "
                "has no img_size; pass a loader of preprocessed batches instead."
            )
        self.img_size = img_size
        # ImageFolderData's crop_pct and resize mode; other data: the default recipe.
        self.resize: EvalResize = getattr(data, "eval_resize", None) or EvalResize(img_size)
        self.batch_size = int(batch_size or getattr(data, "batch_size", None) or DEFAULT_BATCH_SIZE)

    def __len__(self) -> int:
        """Batches (0 for a loader without a length); fewer where a whole batch is unreadable."""
        if self.items is None:
            return len(self.loader) if hasattr(self.loader, "__len__") else 0
        return -(-len(self.items) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        if self.items is None:
            yield from self.loader
            return
        self.skipped = []
        for start in range(0, len(self.items), self.batch_size):
            images = []
            for row in range(start, min(start + self.batch_size, len(self.items))):
                pixels = self._decode(row, self.items[row])
                if pixels is not None:
                    images.append(pixels)
            if images:
                yield torch.stack(images)

    def _decode(self, row: int, item: Any) -> torch.Tensor | None:
        """The item's uint8 pixels, preprocessed as validation does; None (logged, and listed
        in ``skipped``) for a file that cannot be decoded."""
        if not isinstance(item, (str, os.PathLike)):
            return eval_preprocess(image_to_tensor(item), self.resize)
        path = Path(item)
        if not path.is_file():
            raise UserError(f"image not found: {path}. Pass existing image files or a folder.")
        try:
            # Pillow (raises where a native decoder crashes), at reduced size as validation.
            return load_preprocessed(path, self.resize)
        except Exception as e:  # any decoder failure means "not a readable image"
            reason = f"cannot decode it ({type(e).__name__}: {e})".strip()
            log.warning("predict skipped %s: %s; its row is NaN", path, reason)
            self.skipped.append((row, path, reason))
            return None

    def score(self, logits: torch.Tensor, batch: Any) -> dict[str, torch.Tensor]:
        """Keep a batch's probabilities (with ``tta="flip"``, averaged with the mirrored
        batch's); the outputs ``on_predict_batch_end`` gets."""
        probs = self._probs(logits)
        if self.tta == "flip":
            with self.engine.autocast():
                mirrored = self.engine.eval_model(batch[0].flip(-1))
            probs = (probs + self._probs(mirrored.float())) / 2
        self.probs.append(probs)
        return {"logits": logits, "probs": self.probs[-1]}

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """A batch's logits to probabilities: sigmoids for a multi-label task, else softmax."""
        return logits.sigmoid() if self.multilabel else logits.softmax(1)

    def result(self, num_classes: int) -> torch.Tensor:
        """The probabilities kept, as one ``(N, C)`` CPU tensor, one row per image of the
        source, in order; the row of a skipped image is NaN."""
        probs = self.probs
        done = torch.cat(probs).cpu() if probs else torch.empty(0, num_classes)  # one host read
        if not self.skipped:
            return done
        out = torch.full((len(done) + len(self.skipped), num_classes), torch.nan)
        keep = torch.ones(len(out), dtype=torch.bool)
        keep[[row for row, _, _ in self.skipped]] = False
        out[keep] = done
        return out


def _is_loader(source: Any) -> bool:
    """Anything but a path, or a list or tuple of paths, PIL images and uint8 arrays."""
    if isinstance(source, (str, os.PathLike)):
        return False
    if isinstance(source, (list, tuple)):
        return not all(_is_image_item(x) for x in source)
    return True


def _is_image_item(x: Any) -> bool:
    """A path, a PIL image, or a uint8 array of one image (``(H, W)`` or ``(H, W, C)``)."""
    from PIL import Image

    if isinstance(x, np.ndarray):
        return x.dtype == np.uint8 and x.ndim in (2, 3)
    return isinstance(x, (str, os.PathLike, Image.Image))


def _items(source: Any) -> list[Any]:
    """The images of a folder (see :func:`predict_paths`), a path, or a list of them."""
    if not isinstance(source, (str, os.PathLike)):
        return list(source)
    path = Path(source)
    if not path.is_dir():
        return [path]
    items: list[Any] = list(predict_paths(path))
    if not items:
        raise UserError(
            f"no images in {path}: predict looks for {', '.join(sorted(IMG_EXTENSIONS))} "
            "files in it and its sub-folders. Pass another folder, or a list of paths."
        )
    return items
