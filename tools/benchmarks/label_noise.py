"""Measure ``--find-label-issues``: copy a tree, move a share of its training labels, score.

    python tools/benchmarks/label_noise.py make SRC COPY --fraction 0.03 --seed 0
    python tools/train.py --data COPY --out RUN --find-label-issues ...
    python tools/benchmarks/label_noise.py score COPY RUN
    python tools/label_issues.py RUN --folds 3    # the K-fold method, label_issues_cv.csv
    python tools/benchmarks/label_noise.py score COPY RUN --csv label_issues_cv.csv

``make`` copies ``SRC`` (an ImageFolder tree with ``train/``) to ``COPY`` and moves
``fraction`` of the training images, drawn at random, each into another class folder drawn
at random, and lists them in ``COPY/moved.json``; ``SRC`` is only read. ``score`` prints the
precision at k (k = the number moved) of ``RUN/label_issues.csv``: the share of its first k
rows that are moved images.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
from pathlib import Path

MOVED_JSON = "moved.json"


def make(src: Path, copy: Path, fraction: float, seed: int) -> list[str]:
    """Copy ``src`` to ``copy`` and move ``fraction`` of its training images to other classes;
    return the moved images' new paths (also written to ``copy/moved.json``)."""
    shutil.copytree(src, copy)
    train = copy / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = sorted(p for c in classes for p in (train / c).iterdir() if p.is_file())
    rng = random.Random(seed)
    moved = []
    for path in rng.sample(files, round(fraction * len(files))):
        other = rng.choice([c for c in classes if c != path.parent.name])
        target = train / other / f"moved_{path.parent.name}_{path.name}"
        path.rename(target)
        moved.append(str(target.resolve()))
    (copy / MOVED_JSON).write_text(json.dumps(moved, indent=1), encoding="utf-8")
    return moved


def score(copy: Path, run: Path, csv_name: str = "label_issues.csv") -> float:
    """Precision at k of ``run/<csv_name>`` against ``copy/moved.json``."""
    moved = set(json.loads((copy / MOVED_JSON).read_text(encoding="utf-8")))
    with open(run / csv_name, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    top = [str(Path(r["path"]).resolve()) for r in rows[: len(moved)]]
    return sum(p in moved for p in top) / max(len(moved), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="copy a tree and move a share of its training labels")
    m.add_argument("src", type=Path)
    m.add_argument("copy", type=Path)
    m.add_argument("--fraction", type=float, default=0.03)
    m.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("score", help="precision at k of a run's label_issues.csv")
    s.add_argument("copy", type=Path)
    s.add_argument("run", type=Path)
    s.add_argument("--csv", default="label_issues.csv",
                   help="the run's file to score (label_issues_cv.csv: tools/label_issues.py)")
    args = parser.parse_args(argv)
    if args.cmd == "make":
        print(f"moved {len(make(args.src, args.copy, args.fraction, args.seed))} training images")
    else:
        print(f"precision at k: {score(args.copy, args.run, args.csv):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
