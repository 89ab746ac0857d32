"""The ``--loader`` mode of tools/bench.py: our training loader against torchvision's, interleaved.

torchvision's pipeline is the one a tutorial writes: ``ImageFolder`` (Pillow) with
``PILToTensor`` + ``RandomResizedCrop(img_size)`` + ``RandomHorizontalFlip`` on uint8
tensors, shuffled, with the same batch size and workers (persistent, as ours). Ours is
``ImageFolderData(...).train_loader()`` with the same settings; with ``--cache disk`` a third
run reads through the disk cache, in a fresh cache folder, so its first (warm-up) epoch is the
one that fills the cache, and its time is reported apart.

After one warm-up epoch each, the runs take turns, one epoch each, the order rotating every
round, so a machine busy with other work slows them alike; a speed is the median over rounds
and a ratio the median of the per-round ratios. Only the loaders run: no model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from trainer.data import ImageFolderData


class _Run:
    """One loader, timed epoch by epoch."""

    def __init__(self, name: str, loader: Iterable[Any], steps: int | None, set_epoch: Any) -> None:
        self.name, self.loader, self.steps, self.set_epoch = name, loader, steps, set_epoch
        self.epoch = 0
        self.img_s: list[float] = []

    def run_epoch(self) -> float:
        """img/s of one epoch (worker start-up is in the warm-up epoch only: persistent)."""
        self.set_epoch(self.epoch)
        self.epoch += 1
        images = 0
        t0 = time.perf_counter()
        for i, batch in enumerate(self.loader):
            images += len(batch[1])
            if self.steps is not None and i + 1 >= self.steps:
                break
        return images / max(time.perf_counter() - t0, 1e-9)


def _torchvision_loader(
    root: Path, img_size: int, batch_size: int, workers: int
) -> DataLoader[Any]:
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.PILToTensor(),
        v2.RandomResizedCrop(img_size, antialias=True),
        v2.RandomHorizontalFlip(),
    ])  # fmt: skip
    train = root / "train" if (root / "train").is_dir() else root
    return DataLoader(
        datasets.ImageFolder(str(train), transform=transform),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def bench_loader(args: argparse.Namespace, rounds: int) -> dict[str, Any]:
    """torchvision's loader, ours (and ours with ``--cache disk``) on the tree ``args.loader``."""
    root: Path = args.loader
    img_size, batch_size = args.img_size or 224, args.batch_size or 64
    workers = 2 if args.workers is None else args.workers
    runs = [
        _Run("torchvision", _torchvision_loader(root, img_size, batch_size, workers), args.steps,
             lambda e: None),
    ]  # fmt: skip
    datas = []
    caches = ["none", *(["disk"] if args.cache == "disk" else [])]
    with tempfile.TemporaryDirectory(prefix="bench_disk_cache_") as cache_dir:
        for cache in caches:
            disk: dict[str, Any] = {"cache": "disk", "disk_cache_dir": cache_dir}
            data = ImageFolderData(
                root,
                img_size=img_size,
                batch_size=batch_size,
                workers=workers,
                **(disk if cache == "disk" else {}),
            )
            datas.append(data)
            name = "ours" if cache == "none" else "ours, --cache disk"
            runs.append(_Run(name, data.train_loader(), args.steps, data.sampler.set_epoch))
        try:
            first = {r.name: r.run_epoch() for r in runs}  # warm-up; fills the disk cache
            for k in range(rounds):
                order = runs[k % len(runs) :] + runs[: k % len(runs)]
                for r in order:
                    r.img_s.append(r.run_epoch())
        finally:
            for data in datas:
                data.close()
    base = runs[0].img_s
    out: dict[str, Any] = {
        "root": str(root),
        "img_size": img_size,
        "batch_size": batch_size,
        "workers": workers,
        "rounds": rounds,
        "images_per_epoch": _epoch_images(runs[1].loader, args.steps, batch_size),
        "runs": {},
    }
    for r in runs:
        out["runs"][r.name] = {
            "img_s": statistics.median(r.img_s),
            "first_epoch_img_s": first[r.name],
            "ratio": statistics.median(a / b for a, b in zip(r.img_s, base, strict=True)),
            "per_round_img_s": r.img_s,
        }
    return out


def _epoch_images(loader: Any, steps: int | None, batch_size: int) -> int:
    n = len(loader.loader.dataset) if hasattr(loader, "loader") else len(loader.dataset)
    return n if steps is None else min(n, steps * batch_size)


def print_loader(d: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{d['root']}: {d['img_size']}px b{d['batch_size']}, {d['workers']} workers, "
        f"{d['images_per_epoch']} images per epoch, {d['rounds']} rounds"
    )
    for col in ("loader", "img/s (median)", "x torchvision", "first epoch img/s"):
        table.add_column(col, justify="left" if col == "loader" else "right")
    for name, r in d["runs"].items():
        table.add_row(name, f"{r['img_s']:.1f}", f"{r['ratio']:.2f}x",
                      f"{r['first_epoch_img_s']:.1f}")  # fmt: skip
    Console().print(table)
