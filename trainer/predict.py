"""``Engine.predict``: class probabilities for a loader, a folder, or image paths and PIL images.

Images from files or PIL go through the validation transform (``trainer.data.eval_preprocess``)
at the data's ``img_size``; every batch is then normalised on the device as in validation, run
through ``engine.eval_model`` (the EMA weights when EMA is on) under the run's autocast, and
turned into probabilities. The predict hooks fire around it, in Lightning's order.

Example:
    >>> probs = engine.predict("photos/")            # (N, C), rows in predict_paths order
    >>> probs = engine.predict([Image.open("a.jpg"), "b.png"])
    >>> probs = engine.predict(data.val_loader())    # batches of (images, targets) or images
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.data import IMG_EXTENSIONS, eval_preprocess, image_to_tensor, load_image
from trainer.errors import DataError, UserError

if TYPE_CHECKING:
    from PIL import Image

    from trainer.engine import Engine

# A folder, one image path, a list of paths or PIL images, or a loader of batches.
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


def predict(
    engine: Engine, source: PredictSource, batch_size: int | None = None
) -> torch.Tensor:
    """Class probabilities ``(N, C)`` on the CPU, one row per image of ``source``, in order.

    Args:
        engine: the trained engine; its ``eval_model``, device, autocast and normalisation.
        source: a folder (see :func:`predict_paths`), an image path, a list of image paths and
            PIL images, or an iterable of batches (``images`` or ``(images, targets, ...)``;
            uint8 images are normalised with the data's mean/std, float ones used as they are).
        batch_size: images per forward pass for paths and PIL images; default the data's
            ``batch_size``, else 32.

    Raises:
        UserError: a path that does not exist, a folder with no image, an unreadable image, or
            paths with data that has no ``img_size``.
    """
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    batches, num_batches = _batches(engine, source, batch_size)
    s = engine.state
    model = engine.eval_model
    was_training = model.training
    probs: list[torch.Tensor] = []
    try:
        with engine._plan.stage(engine, "predict"), torch.no_grad():
            s.phase = "predict"
            s.num_batches = num_batches
            model.eval()
            engine._call("on_predict_start")
            engine._call("on_predict_epoch_start")
            for batch_idx, raw in enumerate(batches):
                s.batch_idx = batch_idx
                batch = _to_device(engine, raw)
                engine._call("on_predict_batch_start", batch, batch_idx)
                with engine._autocast():
                    logits = model(batch[0])
                logits = logits.float()
                outputs = {"logits": logits, "probs": logits.softmax(1)}
                probs.append(outputs["probs"])
                engine._call("on_predict_batch_end", outputs, batch, batch_idx)
            engine._call("on_predict_epoch_end")
            engine._call("on_predict_end")
    finally:
        model.train(was_training)
        s.phase = "idle"
        engine.artifacts.close()
    if not probs:
        return torch.empty(0, engine.data.num_classes)
    return torch.cat(probs).cpu()  # the one host read


def _is_loader(source: Any) -> bool:
    """Anything but a path, or a list or tuple of paths and PIL images."""
    if isinstance(source, (str, os.PathLike)):
        return False
    if isinstance(source, (list, tuple)):
        return not all(_is_image_item(x) for x in source)
    return True


def _is_image_item(x: Any) -> bool:
    from PIL import Image

    return isinstance(x, (str, os.PathLike, Image.Image))


def _batches(engine: Engine, source: Any, batch_size: int | None) -> tuple[Iterable[Any], int]:
    """The batches of ``source`` and their number (0 when unknown): a loader's own, or uint8
    batches built from files and PIL images."""
    if _is_loader(source):
        return source, len(source) if hasattr(source, "__len__") else 0
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            items: list[Any] = list(predict_paths(path))
            if not items:
                raise UserError(
                    f"no images in {path}: predict looks for {', '.join(sorted(IMG_EXTENSIONS))} "
                    "files in it and its sub-folders. Pass another folder, or a list of paths."
                )
        else:
            items = [path]
    else:
        items = list(source)
    img_size = getattr(engine.data, "img_size", None)
    if not isinstance(img_size, int):
        raise UserError(
            "predict on paths or PIL images needs the validation image size, and engine.data "
            "has no img_size; pass a loader of preprocessed batches instead."
        )
    size = int(batch_size or getattr(engine.data, "batch_size", None) or DEFAULT_BATCH_SIZE)
    return _image_batches(items, img_size, size), -(-len(items) // size)


def _image_batches(items: list[Any], img_size: int, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 ``(B, 3, S, S)`` batches, each image through the validation transform."""
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        yield torch.stack([eval_preprocess(_decode(item), img_size) for item in chunk])


def _decode(item: str | os.PathLike[str] | Image.Image) -> torch.Tensor:
    if not isinstance(item, (str, os.PathLike)):
        return image_to_tensor(item)
    path = Path(item)
    if not path.is_file():
        raise UserError(f"image not found: {path}. Pass existing image files or a folder.")
    try:
        return load_image(path)
    except Exception as e:  # any decoder failure means "not a readable image"
        raise DataError(
            f"cannot decode {path} ({type(e).__name__}: {e}); remove it from the list, or "
            "replace it with a readable image."
        ) from e


def _to_device(engine: Engine, batch: Any) -> tuple[torch.Tensor, ...]:
    """The batch on the device, images normalised there: ``(images,)`` or
    ``(images, targets)``, as the loader gave it."""
    if isinstance(batch, torch.Tensor):
        return (engine._to_device.images(batch),)
    if isinstance(batch, (list, tuple)) and len(batch) == 1:
        return (engine._to_device.images(batch[0]),)
    x, y = engine._to_device(batch)
    return x, y
