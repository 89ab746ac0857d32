"""One tiny trained run on disk (tree, checkpoints, args) for the export and evaluate tools."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from hooks.checkpoint import CheckpointHook
from tests.conftest import make_tree
from trainer.data import ImageFolderData
from trainer.engine import Engine
from trainer.models import build_model


def train_tiny_run(base: Path, *, ema_decay: float = 0.9, test_split: bool = True) -> Path:
    """Fit small_cnn for 2 epochs on a 3-class 16-pixel tree; return the run folder.

    The run folder holds ``checkpoints/{best,last}.pt`` whose ``args`` name the tree, like a
    tools/train.py run; the tree is ``base/tree`` (with a test/ split when ``test_split``).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches gain nothing from threads on a busy 2-core box
    try:
        splits = ("train", "val", "test") if test_split else ("train", "val")
        root = make_tree(base / "tree", splits=splits)
        out = base / "run"
        data = ImageFolderData(root, img_size=16, batch_size=8, workers=0)
        args = {
            "model": "small_cnn",
            "img_size": 16,
            "data": str(root),
            "seed": 0,
            "val_fraction": 0.2,
        }
        Engine(
            build_model("small_cnn", data.num_classes),
            data,
            max_epochs=2,
            hooks=[CheckpointHook(out)],
            device="cpu",
            lr=3e-3,
            ema_decay=ema_decay,
            sanity_steps=0,
            args=args,
        ).fit()
    finally:
        torch.set_num_threads(threads)
    return out


def train_tiny_multilabel_run(base: Path, *, label_sep: str | None = None) -> Path:
    """Fit small_cnn for 2 epochs on the 3-class 16-pixel multi-label set of
    tests/tools/test_multilabel_cli.py; return the run folder (``base/run``).

    The label file is ``base/data/labels.jsonl``, or with ``label_sep`` a CSV
    (``base/data/labels.csv``) whose label column that separator splits; the checkpoints'
    ``args`` name it (and the separator), like a tools/train.py run's.
    """
    from tests.tools.test_multilabel_cli import write_multilabel_set

    labels = write_multilabel_set(base / "data", n_train=24, n_val=16)
    if label_sep is not None:
        rows = [json.loads(line) for line in labels.read_text().splitlines()]
        with open(labels.with_suffix(".csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "split"])
            writer.writerows([r["path"], label_sep.join(r["label"]), r["split"]] for r in rows)
        labels = labels.with_suffix(".csv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = ImageFolderData(labels, img_size=16, batch_size=8, workers=0, label_sep=label_sep)
        args = {"model": "small_cnn", "img_size": 16, "data": str(labels), "seed": 0,
                "val_fraction": 0.2, "label_sep": label_sep}  # fmt: skip
        out = base / "run"
        Engine(build_model("small_cnn", data.num_classes), data, max_epochs=2,
               hooks=[CheckpointHook(out)], device="cpu", lr=1e-2, sanity_steps=0,
               args=args).fit()  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return out
