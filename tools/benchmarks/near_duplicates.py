"""Measure ``--check-leakage`` on near-duplicates: hide altered copies of val images in train.

    python tools/benchmarks/near_duplicates.py demo --count 70
    python tools/benchmarks/near_duplicates.py digits --count 70
    python tools/benchmarks/near_duplicates.py PATH/TO/TREE --count 70 --work /tmp/nd

The source (the built-in demo set, scikit-learn's digits written as 32 px PNGs, or an
ImageFolder tree with ``train/`` and ``val/``) is copied to a work folder (the source is only
read), and ``count`` val images get a copy in ``train/<their class>/``, altered by one of
``KINDS`` in turn: resized, JPEG re-encoded, or cropped by a few per cent. The check then runs
as a run with ``--check-leakage`` runs it, and the bench prints per kind how many hidden
copies it found and missed, and the pairs it reported that were not hidden (false pairs).
It also prints, for the thresholds in ``trainer.data.leakage``, the Hamming distance and
descriptor similarity of every hidden pair, and the closest pairs of different pictures.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainer.data import leakage
from trainer.data.demo import demo_dataset
from trainer.data.folder import ImageFolderData
from trainer.data.phash import descriptor, distances, phash

HIDDEN_JSON = "hidden.json"


def _resize(f: float) -> Callable[[Image.Image], Image.Image]:
    return lambda im: im.resize((round(im.width * f), round(im.height * f)), Image.Resampling.BICUBIC)


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def encode(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))

    return encode


def _crop(share: float) -> Callable[[Image.Image], Image.Image]:
    """Cut ``share`` of the width and height, half on each side."""

    def crop(im: Image.Image) -> Image.Image:
        dx, dy = round(im.width * share / 2), round(im.height * share / 2)
        return im.crop((dx, dy, im.width - dx, im.height - dy))

    return crop


# name -> (alteration, file suffix)
KINDS: dict[str, tuple[Callable[[Image.Image], Image.Image], str]] = {
    "resize50": (_resize(0.5), ".png"),
    "resize150": (_resize(1.5), ".png"),
    "jpeg75": (_jpeg(75), ".jpg"),
    "jpeg50": (_jpeg(50), ".jpg"),
    "resize50+jpeg75": (lambda im: _jpeg(75)(_resize(0.5)(im)), ".jpg"),
    "crop4": (_crop(0.04), ".png"),
    "crop10": (_crop(0.10), ".png"),
}


def digits_tree(root: Path) -> Path:
    """scikit-learn's digits as 32 px PNGs, every 5th in val (as tools/benchmarks/recipes_bench)."""
    from tools.benchmarks.recipes_bench import digits_tree as make

    return make(root)


def make(src: Path, copy: Path, count: int, seed: int) -> list[dict[str, str]]:
    """Copy ``src`` to ``copy`` and hide altered copies of ``count`` val images in its train
    split; return them as ``{"val", "copy", "kind"}`` (also in ``copy/hidden.json``)."""
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns(".*"))
    val = sorted(p for p in (copy / "val").rglob("*") if p.is_file())
    rng = random.Random(seed)
    hidden = []
    for i, path in enumerate(rng.sample(val, min(count, len(val)))):
        kind = list(KINDS)[i % len(KINDS)]
        alter, suffix = KINDS[kind]
        target = copy / "train" / path.parent.name / f"hidden_{i}_{kind}{suffix}"
        with Image.open(path) as im:
            alter(im.convert("RGB")).convert("RGB").save(target)
        hidden.append({"val": str(path), "copy": str(target), "kind": kind})
    (copy / HIDDEN_JSON).write_text(json.dumps(hidden, indent=1), encoding="utf-8")
    return hidden


def score(hidden: list[dict[str, str]], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Found and missed hidden copies per kind, and the reported pairs not hidden."""
    wanted = {frozenset((h["val"], h["copy"])): h["kind"] for h in hidden}
    got = {frozenset(f["path"] for f in p["files"]) for p in pairs}
    found = Counter(kind for key, kind in wanted.items() if key in got)
    return {
        "found": {k: found[k] for k in KINDS},
        "hidden": dict(Counter(h["kind"] for h in hidden)),
        "false": sorted([f["path"] for f in p["files"]] for p in pairs
                         if frozenset(f["path"] for f in p["files"]) not in wanted),
    }  # fmt: skip


def closest_look_alikes(data: ImageFolderData, top: int = 5) -> list[tuple[int, float]]:
    """``(distance, similarity)`` of the cross-split pairs of different pictures (the hidden
    copies left out) that are closest in Hamming distance, then in similarity."""
    train = [str(p) for p in data.train_samples.paths() if "hidden_" not in Path(p).name]
    val = [str(p) for p in data.val_samples.paths()]
    d = distances(np.array([phash(p) for p in val], np.uint64),
                  np.array([phash(p) for p in train], np.uint64))  # fmt: skip
    rows = []
    for r, c in np.argwhere(d <= leakage.NEAR_DISTANCE).tolist():
        rows.append((int(d[r, c]), float(descriptor(val[r]) @ descriptor(train[c]))))
    return sorted(rows, key=lambda x: -x[1])[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="demo, digits, or an ImageFolder tree with train/ and val/")
    parser.add_argument("--count", type=int, default=70, help="val images to hide copies of")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.source == "demo":
            src = demo_dataset()
        elif args.source == "digits":
            src = digits_tree(work / "digits")
        else:
            src = Path(args.source)
        copy = work / "copy"
        hidden = make(src, copy, args.count, args.seed)
        t0 = time.perf_counter()
        data = ImageFolderData(copy, img_size=32, workers=0, check_leakage=True,
                               check_cache_dir=work / "cache")  # fmt: skip
        seconds = time.perf_counter() - t0
        pairs = data.near_duplicates or []
        result = score(hidden, pairs)
        print(f"{args.source}: {sum(map(len, data._splits().values()))} images, "
              f"{len(hidden)} hidden copies; check with hashes {seconds:.1f} s")  # fmt: skip
        print(f"thresholds: distance <= {leakage.NEAR_DISTANCE} bits, "
              f"similarity >= {leakage.NEAR_SIMILARITY}")  # fmt: skip
        for kind in KINDS:
            n, f = result["hidden"].get(kind, 0), result["found"][kind]
            print(f"  {kind:16s} found {f}/{n}, missed {n - f}")
        print(f"  false pairs: {len(result['false'])}", *result["false"][:5], sep="\n    ")
        by_copy = {h["copy"]: h for h in hidden}
        for h in sorted(hidden, key=lambda h: list(KINDS).index(h["kind"])):
            dist = bin(phash(h["val"]) ^ phash(h["copy"])).count("1")
            sim = float(descriptor(h["val"]) @ descriptor(h["copy"]))
            by_copy[h["copy"]]["measured"] = f"{dist} bits, similarity {sim:.4f}"
        for kind in KINDS:
            rows = [h["measured"] for h in hidden if h["kind"] == kind]
            print(f"  {kind:16s} hidden pairs: {'; '.join(rows[:6])}")
        print("  closest different pictures (bits, similarity):",
              [(d, round(s, 4)) for d, s in closest_look_alikes(data)])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
