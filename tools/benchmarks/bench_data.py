"""The ``--data`` mode of tools/bench.py: a real ImageFolder tree, end to end.

It times the loader alone, the model alone (device batches of the same shape), both together,
and the share of the training loop spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from tools.benchmarks.bench_common import (
    DeviceBatches,
    EngineRun,
    EpochTime,
    Workload,
    data_settings,
    interleave,
)
from trainer.data import ImageFolderData
from trainer.data.demo import DATA_DEFAULTS


class _TimedLoader:
    """Wraps a loader: at most ``max_batches`` per epoch; counts images and time in ``next()``."""

    def __init__(self, loader: Any, max_batches: int | None) -> None:
        self.loader = loader
        self.max_batches = max_batches
        self.sampler = getattr(loader, "sampler", None)  # the Engine calls sampler.set_epoch
        self.wait_s = 0.0
        self.first_wait_s = 0.0  # the epoch's first batch: every worker filling its first
        self.images = 0
        self.first_images = 0

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        for _ in range(len(self)):
            t0 = time.perf_counter()
            batch = next(it)
            self.wait_s += time.perf_counter() - t0
            if not self.images:
                self.first_wait_s, self.first_images = self.wait_s, len(batch[1])
            self.images += len(batch[1])
            yield batch


class _TrainOnly:
    """What the Engine needs to train on ``loader``, with no validation."""

    def __init__(self, data: ImageFolderData, loader: _TimedLoader) -> None:
        self.classes, self.num_classes = data.classes, data.num_classes
        self.mean, self.std = data.mean, data.std
        self.loader = loader

    def train_loader(self) -> _TimedLoader:
        return self.loader

    def val_loader(self) -> None:
        return None

    def test_loader(self) -> None:
        return None


def bench_data(
    args: argparse.Namespace, device: torch.device, precision: str, rounds: int
) -> dict[str, Any]:
    """Loader alone, model alone and both, on the ImageFolder tree at ``args.data``."""
    model, img_size, batch_size = data_settings(args, DATA_DEFAULTS)
    data = ImageFolderData(
        args.data,
        img_size=img_size,
        batch_size=batch_size,
        workers=args.workers,
        decode=args.decode,  # the flag used to reach only the printed title
    )
    steps = args.steps
    # Loader alone: the first batch (worker start-up) is left out of the speed.
    loader = _TimedLoader(data.train_loader(), steps)
    it = iter(loader)
    next(it, None)
    t0 = time.perf_counter()
    first = loader.images
    for _ in it:
        pass
    loader_img_s = (loader.images - first) / max(time.perf_counter() - t0, 1e-9)
    n = len(loader)
    del loader, it  # its worker processes go

    w = Workload(model, img_size, batch_size, n, data.num_classes, val_batches=0)
    timed = _TimedLoader(data.train_loader(), steps)
    model_only = EngineRun("model", w, DeviceBatches(w, device), device, precision, rounds + 1)
    end_to_end = EngineRun("end_to_end", w, _TrainOnly(data, timed), device, precision, rounds + 1)
    shares: list[float] = []  # per epoch, the warm-up first
    steady: list[float] = []  # per epoch, img/s after the first batch arrived

    class _E2E:
        """end_to_end with the loader's wait share recorded per epoch."""

        name = "end_to_end"

        def run_epoch(self) -> EpochTime:
            timed.wait_s, timed.images = 0.0, 0
            end_to_end.images = len(timed) * batch_size  # a first guess for run_epoch
            e = end_to_end.run_epoch()
            # The last batch may be short: the wrapper counted the images really trained on.
            e.images, e.train_s = timed.images, e.train_s * timed.images / end_to_end.images
            steady.append(
                (timed.images - timed.first_images) / max(e.train_s - timed.first_wait_s, 1e-9)
            )
            shares.append(timed.wait_s / max(e.train_s, 1e-9))
            return e

    times = {t.name: t for t in interleave([model_only, _E2E()], rounds)}
    model_img_s = times["model"].img_s()
    e2e_img_s = times["end_to_end"].img_s()
    return {
        "root": str(args.data),
        "model": model,
        "img_size": img_size,
        "batch_size": batch_size,
        "workers": data.workers,
        "decode": args.decode,
        "batches_per_epoch": n,
        "loader_img_s": loader_img_s,
        "model_img_s": model_img_s,
        "end_to_end_img_s": e2e_img_s,
        # Once the first batch is there: what a long epoch runs at. The first batch waits for
        # a worker to make a whole batch, once per epoch (the epochs here are short).
        "end_to_end_steady_img_s": statistics.median(steady[1:]),
        "ratio_end_to_end": e2e_img_s / model_img_s,
        "ratio_end_to_end_steady": statistics.median(steady[1:]) / model_img_s,
        "first_batch_s": timed.first_wait_s,
        # Measured: time blocked in next(loader) over the training loop's time.
        "data_wait_share": statistics.median(shares[1:]),
        # Inferred: the slowdown from real data, for a cross-check.
        "data_wait_share_from_speeds": max(0.0, 1.0 - e2e_img_s / model_img_s),
    }


def print_data(d: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{d['root']}: {d['model']} {d['img_size']}px b{d['batch_size']}, "
        f"{d['workers']} workers, decode on {d['decode']}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("loader only", f"{d['loader_img_s']:.0f} img/s")
    table.add_row("model only (device batches)", f"{d['model_img_s']:.0f} img/s")
    table.add_row(
        "end to end", f"{d['end_to_end_img_s']:.0f} img/s ({d['ratio_end_to_end']:.3f}x model)"
    )
    table.add_row(
        "end to end after the first batch",
        f"{d['end_to_end_steady_img_s']:.0f} img/s ({d['ratio_end_to_end_steady']:.3f}x model)",
    )
    table.add_row("first batch of an epoch", f"{d['first_batch_s']:.2f} s")
    table.add_row("waiting for data (measured)", f"{100 * d['data_wait_share']:.1f}%")
    table.add_row(
        "slowdown from data (1 - e2e/model)", f"{100 * d['data_wait_share_from_speeds']:.1f}%"
    )
    Console().print(table)
