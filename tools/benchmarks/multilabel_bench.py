"""Multi-label quality bar: a bare PyTorch loop and tools/train.py, side by side, on the same
multi-label set of real images (2x2 mosaics of scikit-learn's digits, ``multilabel_digits``).

    python tools/benchmarks/multilabel_bench.py --out /tmp/mlbench --epochs 6 --size 32

The bare loop is what a user would write: torchvision's resnet18 from scratch, binary
cross-entropy with logits, AdamW (lr 1e-3), batch 64, the images normalised and nothing else
(no augmentation, no schedule), scored by scikit-learn's macro ``average_precision_score``.
The CLI run is ``tools/train.py --data OUT/digits/labels.jsonl --model resnet18 --img-size
SIZE --epochs N`` with everything else at its defaults for a multi-label set (plus ``--device``,
``--workers`` and ``--cli-args``, e.g. ``--no-hflip``, which the flag's help advises for
digits), scored by its last epoch's ``val/mAP``. Both print the macro mAP of their
last epoch, and the line at the end the gap. Needs scikit-learn.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from tools import train
from tools.benchmarks.multilabel_digits import LABELS_JSONL, make


def _load(labels: Path, split: str, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == split]
    images = np.stack([np.asarray(Image.open(labels.parent / r["path"]).convert("RGB")) for r in rows])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([[float(c in r["label"]) for c in classes] for r in rows])
    return x, y


def bare_loop(labels: Path, epochs: int, device: torch.device, seed: int = 0) -> float:
    """Train resnet18 with BCE and AdamW for ``epochs``; the last epoch's macro mAP on val."""
    from sklearn.metrics import average_precision_score

    torch.manual_seed(seed)
    rows = [json.loads(line) for line in labels.read_text().splitlines() if line.strip()]
    classes = sorted({c for r in rows if r["split"] == "train" for c in r["label"]})
    (x_train, y_train), (x_val, y_val) = (_load(labels, s, classes) for s in ("train", "val"))
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x.to(device).float() / 255 - mean) / std

    model = torchvision.models.resnet18(num_classes=len(classes)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    ap = float("nan")
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train)).split(64):
            loss = loss_fn(model(norm(x_train[idx])), y_train[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            probs = torch.cat([model(norm(x)).sigmoid().cpu() for x in x_val.split(256)])
        ap = float(average_precision_score(y_val.numpy(), probs.numpy(), average="macro"))
        print(f"bare loop  epoch {epoch + 1}: val mAP {ap:.4f}", flush=True)
    return ap


def cli_run(
    labels: Path, out: Path, epochs: int, size: int, device: str, workers: int, extra: str = ""
) -> float:
    """tools/train.py with the task's defaults (and ``extra`` flags); its last val/mAP."""
    argv = ["--data", str(labels), "--out", str(out), "--model", "resnet18", "--img-size",
            str(size), "--epochs", str(epochs), "--device", device, "--workers", str(workers),
            "--quiet", "--overwrite", *extra.split()]  # fmt: skip
    if train.main(argv) != 0:
        raise SystemExit("the CLI run failed")
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        print(f"CLI        epoch {int(r['epoch']) + 1}: val mAP {float(r['val/mAP']):.4f}")
    return float(rows[-1]["val/mAP"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the set and the run")
    parser.add_argument("--train", type=int, default=2000, help="training mosaics")
    parser.add_argument("--val", type=int, default=500, help="validation mosaics")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cli-args", default="", help="more tools/train.py flags, one string")
    parser.add_argument("--skip-bare", action="store_true", help="run the CLI arm only")
    args = parser.parse_args(argv)
    labels = args.out / "digits" / LABELS_JSONL
    if not labels.is_file():
        make(args.out / "digits", args.train, args.val, size=args.size)
    t0 = time.perf_counter()
    bare = float("nan") if args.skip_bare else bare_loop(labels, args.epochs, torch.device(args.device))
    t1 = time.perf_counter()
    cli = cli_run(labels, args.out / "run", args.epochs, args.size, args.device, args.workers,
                  args.cli_args)  # fmt: skip
    t2 = time.perf_counter()
    print(f"macro mAP after {args.epochs} epochs at {args.size} px: bare loop {bare:.4f} "
          f"({t1 - t0:.0f} s), CLI {cli:.4f} ({t2 - t1:.0f} s), CLI - bare {cli - bare:+.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
