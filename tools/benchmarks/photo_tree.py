"""Photo-sized ImageFolder trees for the loader benchmarks, made from real photographs.

    python tools/benchmarks/photo_tree.py /tmp/photos_12mp --size 12mp --per-class 40
    python tools/benchmarks/photo_tree.py /tmp/photos_500 --size imagenet --per-class 200
    python tools/bench.py --loader /tmp/photos_12mp

The sources are the colour photographs scikit-image ships in ``skimage.data`` (the ``bench``
extra: ``pip install -e .[bench]``), one class per photograph. Every image is a different
variant of its photograph: a random 4:3 crop of 40-100% of its area, a random horizontal
flip and a random colour gain, resized to the output size and given a little sensor-like
noise. Without the noise, a 512 px photograph blown up to 12 MP is so smooth that its JPEG is
a small fraction of a camera's and decodes faster than one (entropy decoding is a large share
of a JPEG's decode time); with it a 12-MP file is about 1.5 MB (a phone's are 2-5 MB). JPEG
quality 90, 4:2:0 chroma subsampling, as cameras write them.

The tree (``train/<class>/`` and ``val/<class>/``) is written where you say, and never into
this repository: it is a benchmark input, made again in seconds to minutes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

SIZES: dict[str, tuple[int, int]] = {"12mp": (4032, 3024), "imagenet": (500, 375)}
NOISE_SIGMA = 3.0  # grey levels: a phone photo's grain at base ISO, roughly


def _photographs() -> dict[str, Callable[[], np.ndarray]]:
    """The colour photographs of ``skimage.data`` that ship with the package (no download)."""
    try:
        from skimage import data
    except ImportError as e:
        raise SystemExit(
            "error: the photo trees are made from scikit-image's sample photographs: "
            "pip install scikit-image (or pip install -e .[bench])"
        ) from e
    return {
        "astronaut": data.astronaut,
        "coffee": data.coffee,
        "chelsea": data.chelsea,
        "rocket": data.rocket,
        "hubble": data.hubble_deep_field,
        "retina": data.retina,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "cells": data.immunohistochemistry,
    }


def variant(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One random variant of ``photo`` (``(H, W, 3)`` uint8) at ``size`` ``(width, height)``."""
    from PIL import Image

    h, w = photo.shape[:2]
    aspect = size[0] / size[1]
    area = rng.uniform(0.4, 1.0) * h * w
    cw = int(min(w, round((area * aspect) ** 0.5)))
    ch = int(min(h, round(cw / aspect)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = Image.fromarray(photo[top : top + ch, left : left + cw])
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = img.resize(size, Image.Resampling.BICUBIC)
    gain = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    out = np.asarray(img, dtype=np.float32) * gain
    out += rng.standard_normal(out.shape, dtype=np.float32) * NOISE_SIGMA
    return np.clip(out, 0, 255).astype(np.uint8)


def make_tree(
    root: Path,
    size: tuple[int, int],
    *,
    classes: int = 4,
    per_class: int = 20,
    val_per_class: int = 5,
    seed: int = 0,
    quality: int = 90,
) -> int:
    """Write ``root/{train,val}/<class>/<i>.jpg`` and return the number of files written.

    Raises:
        FileExistsError: ``root`` exists and is not empty (nothing is overwritten).
        ValueError: more classes than photographs.
    """
    from PIL import Image

    photos = _photographs()
    if not 1 <= classes <= len(photos):
        raise ValueError(f"classes must be 1-{len(photos)} (one per photograph), got {classes}")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; remove it or pick a new folder")
    rng = np.random.default_rng(seed)
    written = 0
    for name, load in list(photos.items())[:classes]:
        photo = load()
        for split, n in (("train", per_class), ("val", val_per_class)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(variant(photo, size, rng)).save(
                    folder / f"{i:05d}.jpg", quality=quality, subsampling=2
                )
                written += 1
    return written


def parse_size(text: str) -> tuple[int, int]:
    """``12mp``, ``imagenet`` or ``WxH``."""
    if text in SIZES:
        return SIZES[text]
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {', '.join(SIZES)} or WIDTHxHEIGHT, got {text!r}"
        ) from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"sides must be >= 8, got {text!r}")
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder to create (must not exist, or be empty)")
    p.add_argument(
        "--size", type=parse_size, default="12mp", help="12mp (4032x3024), imagenet (500x375) "
        "or WIDTHxHEIGHT"
    )  # fmt: skip
    p.add_argument("--classes", type=int, default=4, help="classes, one per photograph (1-8)")
    p.add_argument("--per-class", type=int, default=20, help="training images per class")
    p.add_argument("--val-per-class", type=int, default=5, help="validation images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    args = p.parse_args(argv)
    try:
        n = make_tree(
            args.out,
            args.size,
            classes=args.classes,
            per_class=args.per_class,
            val_per_class=args.val_per_class,
            seed=args.seed,
            quality=args.quality,
        )
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {n} JPEGs of {args.size[0]}x{args.size[1]} under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
