"""The built-in demo dataset: drawn shapes, generated once, so a first run needs no download.

Six classes of filled shapes on 64x64 images with varied colour, size, position, rotation,
background (solid or gradient) and noise, deliberately imbalanced so the class-balance tools
have something to show. No two classes differ only by a mirror image, so flips are safe.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from trainer.errors import DataError

DEMO_VERSION = 1
DEMO_NAME = f"demo_shapes_v{DEMO_VERSION}"
DEMO_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
TRAIN_COUNTS: tuple[int, ...] = (300, 240, 180, 120, 90, 60)
VAL_COUNTS: tuple[int, ...] = (60, 48, 36, 30, 30, 30)
IMAGE_SIZE = 64
MARKER = ".complete"
_SUPERSAMPLE = 2  # draw at 2x and downsample, for smooth edges

# Training settings for the demo when a flag is not set (tools/train.py, tools/bench.py --fit):
# a run that finishes in minutes on a laptop CPU.
DEMO_DEFAULTS: dict[str, Any] = {
    "model": "small_cnn",
    "img_size": IMAGE_SIZE,
    "epochs": 15,
    "batch_size": 32,
    "lr": 3e-3,
    "crop_scale": 0.5,  # a crop of 8% of a 64 px image often cuts the shape out
}
# The same settings when a real tree is given (--data): they suit photos.
DATA_DEFAULTS: dict[str, Any] = {
    "model": "resnet18",
    "img_size": 224,
    "epochs": 20,
    "batch_size": 64,
    "lr": 1e-3,
    "crop_scale": 0.08,
}


def default_demo_root() -> Path:
    """``$IMGTRAINER_CACHE/demo_shapes_v1``, else ``~/.cache/imgtrainer/demo_shapes_v1``."""
    base = os.environ.get("IMGTRAINER_CACHE")
    cache = Path(base).expanduser() if base else Path.home() / ".cache" / "imgtrainer"
    return cache / DEMO_NAME


def _marker_payload() -> dict[str, object]:
    return {
        "version": DEMO_VERSION,
        "classes": list(DEMO_CLASSES),
        "train": list(TRAIN_COUNTS),
        "val": list(VAL_COUNTS),
    }


def _is_complete(root: Path) -> bool:
    try:
        return bool(json.loads((root / MARKER).read_text()) == _marker_payload())
    except (OSError, ValueError):
        return False


def demo_dataset(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the demo ImageFolder tree (``train/``, ``val/``), generating it the first time.

    The tree is built in a temporary sibling folder and moved into place in one rename, so an
    interrupted run never leaves half a dataset; a complete one is recognised by its
    ``.complete`` marker and reused. Generation is deterministic and takes a few seconds.

    Args:
        root: where the tree lives; defaults to ``default_demo_root()``.

    Raises:
        DataError: ``root`` exists, is not empty and is not a demo dataset.

    Example:
        >>> from trainer.data import ImageFolderData
        >>> data = ImageFolderData(demo_dataset(), img_size=64)  # doctest: +SKIP
    """
    root = default_demo_root() if root is None else Path(root).expanduser()
    if _is_complete(root):
        return root
    if root.exists():
        if (root / MARKER).exists() or (root.is_dir() and not any(root.iterdir())):
            # An older demo version or an empty folder: ours to replace.
            shutil.rmtree(root) if root.is_dir() else root.unlink()
        else:
            raise DataError(
                f"Demo dataset folder {root} exists but is not a complete demo dataset (no "
                f"{MARKER} marker). Remove it, or pass another folder (or set IMGTRAINER_CACHE)."
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".tmp"))
    try:
        _generate(tmp)
        (tmp / MARKER).write_text(json.dumps(_marker_payload()))
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process (e.g. another DDP rank) finished first: use its copy.
            if not _is_complete(root):
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return root


def _generate(out: Path) -> None:
    for split_id, (split, counts) in enumerate((("train", TRAIN_COUNTS), ("val", VAL_COUNTS))):
        for class_id, (name, n) in enumerate(zip(DEMO_CLASSES, counts, strict=True)):
            folder = out / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                # One generator per image: the content doesn't depend on generation order.
                rng = np.random.default_rng([DEMO_VERSION, split_id, class_id, i])
                img = draw_shape(name, rng)
                if i % 3 == 0:
                    img.save(folder / f"{i:04d}.jpg", quality=92)
                else:
                    img.save(folder / f"{i:04d}.png")


def _polygon(cx: float, cy: float, radii: list[float], rot: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
        for k, r in enumerate(radii)
    ]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c0 = rng.uniform(0, 255, 3)
    if rng.random() < 0.5:
        return np.broadcast_to(c0, (size, size, 3)).astype(np.float32)
    c1 = rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) / math.sqrt(2) + 0.5
    return (c0 * (1 - t[..., None]) + c1 * t[..., None]).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> tuple[int, int, int]:
    # Re-draw until the shape stands out from the background, so every image is learnable.
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - bg_mean).sum() > 200:
            break
    else:
        colour = 255 - bg_mean
    r, g, b = (int(v) for v in colour)
    return r, g, b


def draw_shape(name: str, rng: np.random.Generator) -> Image.Image:
    """Draw one ``IMAGE_SIZE`` square RGB image of shape ``name`` with random appearance."""
    s = IMAGE_SIZE * _SUPERSAMPLE
    bg = _background(rng, s)
    colour = _contrasting_colour(rng, bg.mean(axis=(0, 1)))
    r = rng.uniform(0.16, 0.38) * s
    cx, cy = (rng.uniform(r + 0.03 * s, s - r - 0.03 * s) for _ in range(2))
    rot = rng.uniform(0, 2 * math.pi)

    mask = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(mask)
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * 0.55
        d.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif name == "square":
        d.polygon(_polygon(cx, cy, [r] * 4, rot), fill=255)
    elif name == "triangle":
        d.polygon(_polygon(cx, cy, [r] * 3, rot), fill=255)
    elif name == "star":
        d.polygon(_polygon(cx, cy, [r, r * 0.42] * 5, rot), fill=255)
    elif name == "cross":
        w = r * 0.3
        arm = [(w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w),
               (-w, -w), (-w, -r), (w, -r), (w, -w), (r, -w), (r, w)]
        c, si = math.cos(rot), math.sin(rot)
        d.polygon([(cx + x * c - y * si, cy + x * si + y * c) for x, y in arm], fill=255)
    else:
        raise ValueError(f"unknown demo shape {name!r}; expected one of {DEMO_CLASSES}")

    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255
    img = bg * (1 - alpha) + np.asarray(colour, dtype=np.float32) * alpha
    small = Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR, reducing_gap=None
    )
    arr = np.asarray(small, dtype=np.float32)
    noisy = arr + rng.normal(0, rng.uniform(0, 12), arr.shape)
    return Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8))
