"""What the modes of tools/bench.py share: workloads, device batches, the timed runs.

``EngineRun`` drives an Engine one epoch at a time and clocks its training loop and its whole
epoch; ``interleave`` takes turns between runs so that a busy machine slows them all alike.
The step-ratio mode (bench_steps.py) and ``--data`` (bench_data.py) time their runs this way;
``--fit`` (bench_fit.py) times whole fits, with the same quiet output and default hooks.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hooks import ProgressBarHook, default_hooks
from trainer.data import IMAGENET_MEAN, IMAGENET_STD
from trainer.data.transforms import EvalResize
from trainer.engine import Engine
from trainer.hook import Hook
from trainer.io import atomic_write_json
from trainer.models import build_model

# The settings every run shares (the Engine's defaults, written out for the bare loop).
LR, WEIGHT_DECAY, LABEL_SMOOTHING, WARMUP_EPOCHS = 1e-3, 0.05, 0.1, 1.0

Clock = Callable[[], float]


@dataclass(frozen=True)
class Workload:
    """One model at one input size.

    Args:
        model: a ``build_model`` name.
        img_size: side of the square input.
        batch_size: images per step.
        steps: training batches per (timed) epoch.
        num_classes: size of the head.
        val_batches: validation batches per epoch, kept short: the targets are about training.
    """

    model: str
    img_size: int
    batch_size: int
    steps: int
    num_classes: int = 10
    val_batches: int = 2

    @property
    def name(self) -> str:
        return f"{self.model} {self.img_size}px b{self.batch_size}"


@dataclass
class EpochTime:
    """One epoch of one run: training images, training-loop seconds, whole-epoch seconds."""

    images: int
    train_s: float
    wall_s: float


@dataclass
class RunTimes:
    """The epochs a run has timed; ``first`` is the warm-up (compile time shows there)."""

    name: str
    first: EpochTime | None = None
    epochs: list[EpochTime] = field(default_factory=list)

    def img_s(self, *, wall: bool = False) -> float:
        return statistics.median(speed(e, wall) for e in self.epochs)


def speed(e: EpochTime, wall: bool) -> float:
    return e.images / max(e.wall_s if wall else e.train_s, 1e-9)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- data
class _ListDataset:
    """Indexable ``(image, target)`` pairs, as the sample-visualisation hook re-reads them."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


class DeviceBatches:
    """A data source whose loaders are lists of uint8 batches already on ``device``.

    The Engine's ``.to(device, non_blocking=True)`` is then a no-op, so the bare loop and the
    Engine start from the same tensors and only the loop around the model differs. It has
    what the default hooks read from ``ImageFolderData``: class counts, ``val_samples``,
    ``val_dataset()``, ``img_size`` and the labels mapping.

    Args:
        w: the workload (shapes, number of batches and classes).
        device: where the batches live.
        distinct: distinct batches per split, repeated to ``w.steps`` (saves device memory).
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    sampler = None

    def __init__(self, w: Workload, device: torch.device, distinct: int = 4) -> None:
        self.img_size = w.img_size
        self.num_classes = w.num_classes
        self.classes = [f"class_{i}" for i in range(w.num_classes)]
        g = torch.Generator().manual_seed(0)

        def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            made = []
            for _ in range(min(n, distinct)):
                x = torch.randint(0, 256, (w.batch_size, 3, w.img_size, w.img_size), generator=g)
                y = torch.randint(0, w.num_classes, (w.batch_size,), generator=g)
                made.append((x.to(torch.uint8).to(device), y.to(device)))
            return [made[i % len(made)] for i in range(n)]

        self.train = batches(w.steps)
        self.val = batches(w.val_batches)
        val_x = torch.zeros(0, 3, w.img_size, w.img_size, dtype=torch.uint8)
        val_y = torch.zeros(0, dtype=torch.long)
        if self.val:
            val_x = torch.cat([x for x, _ in self.val]).cpu()
            val_y = torch.cat([y for _, y in self.val]).cpu()
        self._val_set = _ListDataset(val_x, val_y)
        self.val_samples = [(Path(f"val/{i}.png"), int(t)) for i, t in enumerate(val_y)]
        train_y = torch.cat([y for _, y in self.train]).cpu()
        self.class_counts = {
            "train": torch.bincount(train_y, minlength=w.num_classes).tolist(),
            "val": torch.bincount(val_y, minlength=w.num_classes).tolist(),
        }

    def train_loader(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.train

    def val_loader(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        return self.val or None

    def test_loader(self) -> None:
        return None

    def val_dataset(self) -> _ListDataset:
        return self._val_set

    def labels_mapping(self) -> dict[str, Any]:
        return {
            "class_to_idx": {c: i for i, c in enumerate(self.classes)},
            "idx_to_class": {str(i): c for i, c in enumerate(self.classes)},
            **EvalResize(self.img_size).mapping(),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
        }

    def save_labels_mapping(self, path: str | Path) -> None:
        atomic_write_json(path, self.labels_mapping())


# ---------------------------------------------------------------------------------- runs
class _EpochStart(Hook):
    """Clocks the start of each epoch and of its validation (the training loop's end).

    The artefact writer is flushed first. The engine flushes it whenever a fit returns, so
    what waits there now is what ``on_fit_start`` queued (each ``run_epoch`` is a fit), which
    would otherwise be drawn inside this epoch. The epoch's own plots are drawn when its fit
    returns, after ``_EpochEnd`` has clocked it: ``--fit`` times them, over whole fits.
    """

    order = -(10**9)  # first of all, so no other hook's work falls outside the clock

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.t = self.t_val = 0.0

    def on_train_epoch_start(self, engine: Engine) -> None:
        engine.artifacts.flush()
        self.t = self.t_val = self.clock()

    def on_validation_start(self, engine: Engine) -> None:
        if engine.state.phase == "val":
            sync(engine.device)
            self.t_val = self.clock()


class _EpochEnd(Hook):
    order = 10**9  # last of all: the epoch's wall time includes every epoch-end hook

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.t = 0.0

    def on_train_epoch_end(self, engine: Engine) -> None:
        sync(engine.device)
        self.t = self.clock()


class EngineRun:
    """An Engine driven one epoch per ``run_epoch`` through the public ``fit``.

    Each call raises ``max_epochs`` by one and fits, so the Engine trains exactly one more
    epoch; the schedule is built for the whole bench. ``on_fit_start`` hooks (dataset and
    model tables) run every call, outside the timed epoch. Output goes to a discarded buffer.
    The training loop is timed from the first ``on_train_epoch_start`` to the first
    ``on_validation_start`` (or, with no validation, by the Engine's ``train/img_s``).
    """

    def __init__(
        self,
        name: str,
        w: Workload,
        data: Any,
        device: torch.device,
        precision: str,
        epochs: int,
        hooks: Sequence[Hook] = (),
        clock: Clock = time.perf_counter,
        **engine_kwargs: Any,
    ) -> None:
        torch.manual_seed(0)
        self.name = name
        self.images = w.steps * w.batch_size
        self._start, self._end = _EpochStart(clock), _EpochEnd(clock)
        self.engine = Engine(
            build_model(w.model, w.num_classes),
            data,
            max_epochs=epochs,
            lr=LR,
            weight_decay=WEIGHT_DECAY,
            warmup_epochs=WARMUP_EPOCHS,
            label_smoothing=LABEL_SMOOTHING,
            precision=precision,
            device=device,
            hooks=[self._start, *hooks, self._end],
            sanity_steps=0,
            **engine_kwargs,
        )
        self.engine.max_epochs = 0

    def run_epoch(self) -> EpochTime:
        e = self.engine
        e.max_epochs = len(e.state.history) + 1
        with quiet():
            e.fit()
        if self._start.t_val > self._start.t:
            train_s = self._start.t_val - self._start.t
        else:  # no validation: the Engine's own clock of its training loop
            train_s = self.images / e.state.history[-1]["train/img_s"]
        return EpochTime(self.images, train_s, self._end.t - self._start.t)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send stdout and stderr (tables, progress bar) to a buffer that is thrown away."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def hooks_for_bench(out_dir: Path, export: bool = False) -> list[Hook]:
    """The default hooks (minus export unless asked), with the progress bar forced on (it
    would turn itself off writing to a non-terminal, and then cost nothing)."""
    return [
        ProgressBarHook(disable=False) if isinstance(h, ProgressBarHook) else h
        for h in default_hooks(out_dir, export=export)
    ]


# ---------------------------------------------------------------------------- benchmark
def interleave(runs: Sequence[Any], rounds: int) -> list[RunTimes]:
    """One warm-up epoch per run, then ``rounds`` rounds of one epoch each, order rotating."""
    times = [RunTimes(r.name) for r in runs]
    for r, t in zip(runs, times, strict=True):
        gc.collect()
        t.first = r.run_epoch()
    for k in range(rounds):
        for i in range(len(runs)):
            j = (i + k) % len(runs)
            # Each epoch starts from a collected heap: the plotting run's garbage would
            # otherwise be collected inside whichever run's step loop comes next.
            gc.collect()
            times[j].epochs.append(runs[j].run_epoch())
    return times


def paired_ratio(a: RunTimes, b: RunTimes, *, wall: bool = False) -> float:
    """Median over rounds of ``speed(a) / speed(b)``, each pair timed in the same round."""
    return statistics.median(
        speed(x, wall) / speed(y, wall) for x, y in zip(a.epochs, b.epochs, strict=True)
    )


def data_settings(args: argparse.Namespace, settings: dict[str, Any]) -> tuple[str, int, int]:
    """Model, image size and batch size: the flags, else ``settings`` (train.py's defaults)."""
    return (
        args.model or settings["model"],
        args.img_size or settings["img_size"],
        args.batch_size or settings["batch_size"],
    )
