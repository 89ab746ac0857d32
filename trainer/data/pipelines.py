"""Pluggable transform pipelines: your own training and validation transforms, passed to
``ImageFolderData`` or loaded from a Python file (``tools/train.py --transforms FILE.py``).

A transforms file defines two functions of the image size that return v2 transforms::

    from torchvision.transforms import v2

    def train_transforms(img_size):
        return v2.Compose([v2.RandomResizedCrop(img_size, antialias=True), v2.RandomGrayscale()])

    def val_transforms(img_size):
        return v2.Compose([v2.Resize(int(img_size / 0.875), antialias=True), v2.CenterCrop(img_size)])

Both take and return uint8 ``(3, H, W)`` tensors (the engine normalises on the device). The
validation pipeline must compute what ``labels_mapping.json`` describes (``crop_pct`` and
``resize_mode``, from ``--crop-pct`` and ``--val-resize``), because that file is all an
exported model's preprocessing (``tools/predict.py``, the ONNX predictor) knows: it is run on
probe images next to the recipe those fields describe and refused when the two differ, with
the values of the fields that would describe it when there are such values.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from trainer.data.transforms import EvalResize, as_resize, eval_preprocess
from trainer.errors import ConfigError
from trainer.rng import torch_seeded

Transform = Callable[[torch.Tensor], torch.Tensor]


class TransformError(ConfigError):
    """A pipeline refused by ``check_train_transform`` or ``check_val_transform``."""


# A validation pipeline may differ from the mapping's by this much (mean absolute difference in
# uint8 levels on the probes), e.g. another but equivalent resize; a different crop or
# colour change is far beyond it.
VAL_TOLERANCE = 0.5


def probe_images(img_size: int) -> list[torch.Tensor]:
    """Two deterministic uint8 images, landscape and portrait, larger than ``img_size``:
    smooth gradients with texture, so resizes and crops that differ show."""
    g = torch.Generator().manual_seed(0)
    images = []
    for h, w in ((img_size * 3 // 2 + 7, img_size * 2 + 3), (img_size * 2 + 5, img_size + 9)):
        yy = torch.linspace(0, 1, h)[:, None].expand(h, w)
        xx = torch.linspace(0, 1, w)[None, :].expand(h, w)
        base = torch.stack([yy, xx, (yy + xx) / 2]) * 200
        noise = torch.rand(3, h, w, generator=g) * 55
        images.append((base + noise).to(torch.uint8))
    return images


def _run(transform: Transform, img: torch.Tensor, img_size: int, what: str) -> torch.Tensor:
    try:
        out = transform(img.clone())
    except Exception as e:
        raise TransformError(
            f"{what} failed on a uint8 (3, H, W) probe image ({type(e).__name__}: {e}); "
            "it must take and return uint8 (3, H, W) tensors"
        ) from e
    if not (
        isinstance(out, torch.Tensor)
        and out.dtype == torch.uint8
        and tuple(out.shape) == (3, img_size, img_size)
    ):
        got = (
            f"{out.dtype} tensor of shape {tuple(out.shape)}"
            if isinstance(out, torch.Tensor)
            else type(out).__name__
        )
        raise TransformError(
            f"{what} must return a uint8 tensor of shape (3, {img_size}, {img_size}) (the engine "
            f"normalises on the device), got a {got}; end it with a crop or resize to img_size "
            "and keep uint8 (no ToDtype/Normalize)"
        )
    return out


def check_train_transform(
    transform: Transform, img_size: int, what: str = "train_transform"
) -> None:
    """Refuse (``TransformError``) a training pipeline that does not map uint8 images to uint8
    ``(3, img_size, img_size)``."""
    for img in probe_images(img_size):
        with torch_seeded(0):
            _run(transform, img, img_size, what)


def check_val_transform(
    transform: Transform, size: int | EvalResize, what: str = "val_transform"
) -> None:
    """Refuse (``TransformError``) a validation pipeline that is random, or that computes
    something else on the probe images than the resize ``size`` describes (an ``EvalResize``,
    what ``labels_mapping.json`` records; an int: the default one at that size)."""
    resize = as_resize(size)
    img_size = resize.img_size
    outputs = []
    for img in probe_images(img_size):
        with torch_seeded(1):
            out = _run(transform, img, img_size, what).float()
        with torch_seeded(2):
            again = _run(transform, img, img_size, what).float()
        if not torch.equal(out, again):
            raise TransformError(
                f"{what} is random (two runs on the same image differ); validation must be "
                "deterministic: move random operations to the training pipeline"
            )
        outputs.append(out)
    diff = _difference(outputs, resize)
    if diff <= VAL_TOLERANCE:
        return
    asked = f"crop_pct {resize.crop_pct}, resize_mode {resize.mode}"
    problem = (
        f"{what} does not compute what labels_mapping.json describes ({asked}: "
        f"{_recipe(resize)}): on a probe image it differs by {diff:.1f} levels on average. "
        "Exported models and tools/predict.py preprocess from that file only, so they would see "
        "other inputs than validation did."
    )
    found = _described_by(transform, img_size)
    if found is not None and _difference(outputs, found) <= VAL_TOLERANCE:
        flags = f"--val-resize {found.mode}"
        flags += f" --crop-pct {found.crop_pct}" if found.mode == "crop" else ""
        raise TransformError(
            f"{problem} It computes what crop_pct {found.crop_pct}, resize_mode {found.mode} "
            f"describe ({_recipe(found)}): set those fields with {flags} (in Python: "
            f"ImageFolderData(crop_pct={found.crop_pct}, val_resize={found.mode!r}))"
        )
    raise TransformError(
        f"{problem} labels_mapping.json describes two recipes, set by --crop-pct and "
        "--val-resize (ImageFolderData's crop_pct and val_resize): crop (v2.Resize(int(img_size "
        "/ crop_pct), antialias=True), v2.CenterCrop(img_size)) and squash (v2.Resize((img_size, "
        "img_size), antialias=True)). Make val_transforms one of them and set the two fields to "
        "match, or leave val_transforms out"
    )


def _difference(outputs: list[torch.Tensor], resize: EvalResize) -> float:
    """The largest mean absolute difference between ``outputs`` and the recipe's on the
    probe images (uint8 levels)."""
    probes = probe_images(resize.img_size)
    return max(
        (out - eval_preprocess(img, resize).float()).abs().mean().item()
        for out, img in zip(outputs, probes, strict=True)
    )


def _recipe(resize: EvalResize) -> str:
    if resize.mode == "squash":
        return f"the whole image resized to {resize.img_size}x{resize.img_size}, bilinear"
    return f"the short side resized to {resize.resize_size}, centre crop {resize.img_size}, bilinear"


def _described_by(transform: Transform, img_size: int) -> EvalResize | None:
    """The resize the first ``v2.Resize`` of ``transform`` suggests (a short side: crop; a
    square of ``img_size``: squash), or None; the caller checks it on the probes."""
    steps = transform.transforms if isinstance(transform, v2.Compose) else [transform]
    first: Any = next((t for t in steps if type(t) is v2.Resize), None)
    size = list(first.size) if first is not None and first.size is not None else []
    if len(size) == 2 and size == [img_size, img_size]:
        return EvalResize(img_size, 1.0, "squash")
    if len(size) != 1 or size[0] < img_size:
        return None
    # The shortest crop_pct that gives this side back (int(img_size / crop_pct) == side).
    for digits in range(2, 10):
        crop_pct = math.floor(img_size / size[0] * 10**digits) / 10**digits
        if crop_pct > 0 and int(img_size / crop_pct) == size[0]:
            return EvalResize(img_size, crop_pct, "crop")
    return None


def load_transforms_file(
    path: str | Path, size: int | EvalResize, check_val: bool = True
) -> tuple[Transform, Transform]:
    """``(train, val)`` pipelines from a Python file defining ``train_transforms(img_size)`` and
    ``val_transforms(img_size)``; each is checked (``check_*_transform``), the validation one
    against the resize ``size`` (an ``EvalResize``; an int: the default one at that size)
    unless ``check_val`` is False (``ImageFolderData`` checks it against the resize its
    data's task picks)."""
    path, resize = Path(path), as_resize(size)
    img_size = resize.img_size
    flag = f"--transforms {path}"
    if not path.is_file():
        raise ConfigError(
            f"{flag}: no such file; pass a .py file that defines "
            "train_transforms(img_size) and val_transforms(img_size)"
        )
    name = "_imgtrainer_transforms_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{flag}: not a Python file; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # so loader workers can unpickle classes the file defines
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"{flag} failed to import ({type(e).__name__}: {e}); fix the file") from e
    pipelines: list[Transform] = []
    for fn in ("train_transforms", "val_transforms"):
        factory: Any = getattr(module, fn, None)
        if not callable(factory):
            raise ConfigError(
                f"{flag} defines no function {fn}(img_size); add it (it returns "
                "a v2 transform on uint8 (3, H, W) tensors)"
            )
        try:
            pipelines.append(factory(img_size))
        except Exception as e:
            raise ConfigError(f"{flag}: {fn}({img_size}) raised {type(e).__name__}: {e}") from e
    train, val = pipelines
    check_train_transform(train, img_size, f"{flag}: train_transforms({img_size})")
    if check_val:
        check_val_transform(val, resize, f"{flag}: val_transforms({img_size})")
    return train, val


def describe_pipelines(train: Any, val: Any, source: str | None = None) -> dict[str, Any]:
    """What ``args.json`` records of the pipelines a run used: their source (the file and its
    SHA-256, or "built-in") and their ``repr``."""
    record: dict[str, Any] = {
        "source": source or "built-in",
        "train": repr(train),
        "val": repr(val),
    }
    if source:
        record["sha256"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return record
