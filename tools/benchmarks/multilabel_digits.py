"""A multi-label image set made from real images: 2x2 mosaics of scikit-learn's digits.

    python tools/benchmarks/multilabel_digits.py OUT --train 2000 --val 500 --size 32

Each image is a 2x2 mosaic of 8x8 handwritten digits (scikit-learn's ``load_digits``, 1,797
scans), upscaled to ``size`` pixels; a tile is left blank with probability ``blank``, so some
images carry no digit at all. An image's labels are the digits it shows (a set: a digit shown
twice counts once), 10 classes "0" to "9". Training mosaics are drawn from one half of the
scans and validation mosaics from the other, so no scan is in both splits.

``OUT/labels.jsonl`` lists the images with their labels and split
(``{"path": "images/00000.png", "label": ["3", "7"], "split": "train"}``); pass it to
``tools/train.py --data``. Needs scikit-learn (``pip install scikit-learn``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

LABELS_JSONL = "labels.jsonl"


def make(
    out: Path, n_train: int, n_val: int, *, size: int = 32, seed: int = 0, blank: float = 0.25
) -> Path:
    """Write the mosaics and ``out/labels.jsonl``; return the label file's path."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = (digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scans))
    halves = {"train": order[: len(order) // 2], "val": order[len(order) // 2 :]}
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for split, n in (("train", n_train), ("val", n_val)):
        for _ in range(n):
            tiles, labels = [], set()
            for _ in range(4):
                if rng.random() < blank:
                    tiles.append(np.zeros((8, 8), np.uint8))
                    continue
                i = int(rng.choice(halves[split]))
                tiles.append(scans[i])
                labels.add(str(int(digits.target[i])))
            mosaic = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
            img = Image.fromarray(mosaic).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            name = f"images/{len(rows):05d}.png"
            img.save(out / name)
            rows.append({"path": name, "label": sorted(labels), "split": split})
    path = out / LABELS_JSONL
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the images and labels.jsonl to")
    parser.add_argument("--train", type=int, default=2000, help="training mosaics")
    parser.add_argument("--val", type=int, default=500, help="validation mosaics")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--blank", type=float, default=0.25, help="chance a tile is blank")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make(args.out, args.train, args.val, size=args.size, seed=args.seed, blank=args.blank)
    print(f"wrote {args.train + args.val} mosaics and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
