"""Training throughput of the Engine against a hand-written loop, side by side in one process.

python tools/bench.py --preset cpu            # small_cnn and resnet18, about 2 minutes on 2 cores
python tools/bench.py --preset cpu --threads 1 --clock cpu   # steadier on a shared machine
python tools/bench.py --preset gpu --ema --lightning --json bench.json
python tools/bench.py --preset gpu --compile  # compile time apart from steady-state speed
python tools/bench.py --data DIR --model resnet18 --img-size 224 --batch-size 64 [--decode gpu]
python tools/bench.py --fit --epochs 15       # the default hooks' share of epoch time, on the demo

Per workload it builds three runs of the same model, optimizer (AdamW, the Engine's default
groups), loss (cross-entropy, label smoothing 0.1), precision and channels_last, on the same
uint8 batches already on the device:

  bare    a minimal hand-written loop: normalise, forward under autocast, loss, backward,
          optimizer and scheduler step, zero_grad(set_to_none=True); then the same
          validation batches, read once.
  engine  ``Engine`` with no hooks.
  hooks   ``Engine`` with ``default_hooks(export=False)``: ONNX export runs once at fit end,
          so it is left out; the progress bar is on and writes into a discarded buffer.

After a warm-up epoch the runs take turns, one epoch each (the order rotating every round), so
a busy machine slows all of them alike; each figure is the median over rounds, and a ratio is
the median of the per-round ratios. On a CPU shared with other jobs, wall time swings by 10%
and more between epochs; ``--threads 1 --clock cpu`` times the CPU time of the one thread that
does the work instead, which other processes disturb far less. Two speeds are reported:

  step    training images / time of the training loop only (the Engine's ``train/img_s``):
          what the issue's targets are about.
  epoch   training images / wall time of the whole epoch: training, the (short) validation,
          and every epoch-end hook (metrics.csv, checkpoints, queueing the plots). With the
          bench's short epochs the hooks' fixed cost per epoch weighs far more than in a real
          run, so it is also printed in seconds ("epoch end"), to scale to a real epoch's
          length. The plots themselves are drawn on a background thread, which each epoch
          here waits for before its clock starts: ``--fit`` times them.

``--fit`` times whole fits of the demo (or ``--data DIR``), alternating no hooks and the
default hooks: epoch time there runs until the background drawing is done, so it holds
everything the hooks cost per epoch.

``--data DIR`` instead times a real ImageFolder tree end to end: the loader alone, the model
alone (device batches of the same shape), both together, and the share of the training loop
spent waiting for the next batch. With ``--decode gpu`` the loader only reads the files and
draws the crops; the decoding then counts in the training loop, on the device.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hooks import CheckpointHook, ProgressBarHook, default_hooks
from hooks._artifacts import flush as artifacts_flush
from hooks._artifacts import settle as artifacts_settle
from hooks._artifacts import writer_cpu_seconds
from trainer.data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderData, resize_size
from trainer.demo import DATA_DEFAULTS, DEMO_DEFAULTS, demo_dataset
from trainer.device import autocast_dtype, resolve_device, resolve_precision, steady_malloc
from trainer.engine import Engine, default_optimizer, warmup_cosine
from trainer.errors import UserError
from trainer.hook import HOOK_METHODS, Hook
from trainer.io import atomic_write_json
from trainer.models import MODELS, build_model

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


@dataclass(frozen=True)
class Preset:
    workloads: tuple[Workload, ...]
    rounds: int  # timed epochs per run, after one warm-up epoch


PRESETS: dict[str, Preset] = {
    # For tests: seconds, and no meaning.
    "tiny": Preset((Workload("small_cnn", 16, 8, steps=2, num_classes=3, val_batches=1),), 1),
    "cpu": Preset(
        (Workload("small_cnn", 32, 64, steps=16), Workload("resnet18", 32, 32, steps=8)), 5
    ),
    "gpu": Preset(
        (Workload("resnet18", 32, 512, steps=300), Workload("resnet50", 224, 256, steps=25)), 5
    ),
}


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
        return statistics.median(_speed(e, wall) for e in self.epochs)


def _speed(e: EpochTime, wall: bool) -> float:
    return e.images / max(e.wall_s if wall else e.train_s, 1e-9)


def _sync(device: torch.device) -> None:
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
            "image_size": self.img_size,
            "resize_size": resize_size(self.img_size),
            "interpolation": "bilinear",
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
        }

    def save_labels_mapping(self, path: str | Path) -> None:
        atomic_write_json(path, self.labels_mapping())


# ---------------------------------------------------------------------------------- runs
class BareLoop:
    """The minimal hand-written loop the Engine is measured against.

    It does the work any loop must do and nothing more: no metric sums, no hooks, one host
    read per epoch. Same optimizer groups, scheduler, loss, precision and memory format as
    the Engine.
    """

    name = "bare"

    def __init__(
        self,
        w: Workload,
        data: DeviceBatches,
        device: torch.device,
        precision: str,
        epochs: int,
        clock: Clock = time.perf_counter,
    ) -> None:
        torch.manual_seed(0)
        self.device, self.data, self.clock = device, data, clock
        # As the Engine decides: NHWC where cuDNN / oneDNN are faster with it, cuDNN autotuning.
        self.channels_last = device.type in ("cuda", "cpu")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = build_model(w.model, w.num_classes).to(device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.opt = default_optimizer(self.model, LR, WEIGHT_DECAY, device)
        self.sched = warmup_cosine(self.opt, round(WARMUP_EPOCHS * w.steps), epochs * w.steps)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING).to(device)
        self.amp = autocast_dtype(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        m = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * s), -m / s

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.addcmul(self.shift, x.float(), self.scale)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def run_epoch(self) -> EpochTime:
        t0 = self.clock()
        self.model.train()
        images = 0
        for x, y in self.data.train:
            with self._autocast():
                loss = self.loss_fn(self.model(self._prep(x)), y)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
            images += y.shape[0]
        _sync(self.device)
        train_s = self.clock() - t0
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        with torch.no_grad():
            for x, y in self.data.val:
                with self._autocast():
                    correct += (self.model(self._prep(x)).argmax(1) == y).sum()
        correct.item()
        return EpochTime(images, train_s, self.clock() - t0)


class _EpochStart(Hook):
    """Clocks the start of each epoch and of its validation (the training loop's end).

    The artefact writer is drained first: its backlog (the plots of ``on_fit_start``, which
    each ``run_epoch`` calls) would otherwise fall in this epoch. Background drawing is
    timed by ``--fit``, over whole fits.
    """

    order = -(10**9)  # first of all, so no other hook's work falls outside the clock

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.t = self.t_val = 0.0

    def on_train_epoch_start(self, engine: Engine) -> None:
        artifacts_flush()
        self.t = self.t_val = self.clock()

    def on_validation_start(self, engine: Engine) -> None:
        if engine.state.phase == "val":
            _sync(engine.device)
            self.t_val = self.clock()


class _EpochEnd(Hook):
    order = 10**9  # last of all: the epoch's wall time includes every epoch-end hook

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.t = 0.0

    def on_train_epoch_end(self, engine: Engine) -> None:
        _sync(engine.device)
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


# ------------------------------------------------------------------------------ lightning
class _Iterable:
    """A list of batches seen as one loader."""

    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)


def lightning_run(
    w: Workload, data: DeviceBatches, device: torch.device, precision: str, epochs: int
) -> RunTimes | str:
    """The same workload under Lightning, when it is installed; else a note saying it is not.

    Not interleaved (a Lightning fit cannot be resumed one epoch at a time cheaply): its epochs
    run after the others, so compare it with care on a busy machine.
    """
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            return "Lightning is not installed (pip install lightning); skipped"

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = build_model(w.model, w.num_classes)
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
            m = torch.tensor(data.mean).view(1, -1, 1, 1)
            s = torch.tensor(data.std).view(1, -1, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * s), persistent=False)
            self.register_buffer("shift", -m / s, persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.contiguous(memory_format=torch.channels_last)
            return self.model(torch.addcmul(self.shift, x.float(), self.scale))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.loss_fn(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val/acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self) -> Any:
            opt = default_optimizer(self.model, LR, WEIGHT_DECAY, device)
            sched = warmup_cosine(opt, round(WARMUP_EPOCHS * w.steps), epochs * w.steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.times = RunTimes("lightning")
            self.t0 = self.t1 = 0.0

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_validation_start(self, trainer: Any, module: Any) -> None:
            _sync(device)  # Lightning validates inside the training epoch
            self.t1 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            _sync(device)
            e = EpochTime(w.steps * w.batch_size, self.t1 - self.t0, time.perf_counter() - self.t0)
            if self.times.first is None:
                self.times.first = e
            else:
                self.times.epochs.append(e)

    lightning_precision = {"32": "32-true"}.get(precision, precision)
    clock = Clock()
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=1,
        max_epochs=epochs,
        precision=lightning_precision,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    module = Module().to(memory_format=torch.channels_last)
    with quiet():
        # Wrapped: Lightning would take a bare list as a list of loaders.
        trainer.fit(module, _Iterable(data.train), _Iterable(data.val))
    return clock.times


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
        _speed(x, wall) / _speed(y, wall) for x, y in zip(a.epochs, b.epochs, strict=True)
    )


def bench_workload(
    w: Workload, device: torch.device, precision: str, rounds: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Time bare, engine and engine+hooks (and the opt-in runs) on one workload."""
    epochs = rounds + 1
    if args.compile:
        # A fresh compile cache: a model compiled for the previous workload's shapes would make
        # this one recompile with dynamic shapes (slower code), which a real run never sees.
        torch._dynamo.reset()
    data = DeviceBatches(w, device)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        default = hooks_for_bench(Path(tmp))
        runs: list[Any] = [
            BareLoop(w, data, device, precision, epochs, clock),
            EngineRun("engine", w, data, device, precision, epochs, clock=clock),
            EngineRun("hooks", w, data, device, precision, epochs, default, clock=clock),
        ]
        if args.ema:
            runs.append(
                EngineRun("ema", w, data, device, precision, epochs, clock=clock, ema_decay=0.999)
            )
        if args.compile:
            runs.append(
                EngineRun("compile", w, data, device, precision, epochs, clock=clock, compile=True)
            )
        times = {t.name: t for t in interleave(runs, rounds)}
    bare, engine, hooks = times["bare"], times["engine"], times["hooks"]
    result: dict[str, Any] = {
        "name": w.name,
        "bare_img_s": bare.img_s(),
        "engine_img_s": engine.img_s(),
        "engine_hooks_img_s": hooks.img_s(),
        "ratio_engine": paired_ratio(engine, bare),
        "ratio_hooks": paired_ratio(hooks, bare),
        "ratio_hooks_min": min(
            _speed(h, False) / _speed(b, False)
            for h, b in zip(hooks.epochs, bare.epochs, strict=True)
        ),
        "bare_epoch_img_s": bare.img_s(wall=True),
        "engine_epoch_img_s": engine.img_s(wall=True),
        "engine_hooks_epoch_img_s": hooks.img_s(wall=True),
        "ratio_engine_epoch": paired_ratio(engine, bare, wall=True),
        "ratio_hooks_epoch": paired_ratio(hooks, bare, wall=True),
        # Seconds per epoch beyond the training loop (validation + epoch-end hooks).
        "bare_epoch_end_s": statistics.median(e.wall_s - e.train_s for e in bare.epochs),
        "engine_epoch_end_s": statistics.median(e.wall_s - e.train_s for e in engine.epochs),
        "hooks_epoch_end_s": statistics.median(e.wall_s - e.train_s for e in hooks.epochs),
        "model": w.model,
        "img_size": w.img_size,
        "batch_size": w.batch_size,
        "steps": w.steps,
        "rounds": rounds,
    }
    if "ema" in times:
        result["ema_img_s"] = times["ema"].img_s()
        # EMA's share of step time: 1 - speed with EMA / speed without, same round.
        result["ema_cost"] = 1.0 - paired_ratio(times["ema"], engine)
    if "compile" in times:
        c = times["compile"]
        assert c.first is not None
        result["compile_img_s"] = c.img_s()
        result["ratio_compile"] = paired_ratio(c, bare)
        # The warm-up epoch's extra time over a steady epoch is what compiling cost.
        result["compile_s"] = c.first.wall_s - statistics.median(e.wall_s for e in c.epochs)
    if args.lightning:
        try:
            lt = lightning_run(w, data, device, precision, epochs)
        except Exception as e:  # an optional comparison must not cost the results above
            lt = f"Lightning run failed: {type(e).__name__}: {e}"
        if isinstance(lt, str):
            result["lightning_note"] = lt
        elif lt.epochs:
            result["lightning_img_s"] = lt.img_s()
            result["ratio_lightning"] = lt.img_s() / bare.img_s()
    return result


# ------------------------------------------------------------------------------ --data
class _TimedLoader:
    """Wraps a loader: at most ``max_batches`` per epoch; counts images and time in ``next()``."""

    def __init__(self, loader: Any, max_batches: int | None) -> None:
        self.loader = loader
        self.max_batches = max_batches
        self.sampler = getattr(loader, "sampler", None)  # the Engine calls sampler.set_epoch
        self.wait_s = 0.0
        self.images = 0

    def __len__(self) -> int:
        n = len(self.loader)
        return n if self.max_batches is None else min(n, self.max_batches)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self.loader)
        for _ in range(len(self)):
            t0 = time.perf_counter()
            batch = next(it)
            self.wait_s += time.perf_counter() - t0
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
    model, img_size, batch_size = _data_settings(args, DATA_DEFAULTS)
    data = ImageFolderData(
        args.data, img_size=img_size, batch_size=batch_size, workers=args.workers
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

    class _E2E:
        """end_to_end with the loader's wait share recorded per epoch."""

        name = "end_to_end"

        def run_epoch(self) -> EpochTime:
            timed.wait_s, timed.images = 0.0, 0
            end_to_end.images = len(timed) * batch_size  # a first guess for run_epoch
            e = end_to_end.run_epoch()
            # The last batch may be short: the wrapper counted the images really trained on.
            e.images, e.train_s = timed.images, e.train_s * timed.images / end_to_end.images
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
        # Measured: time blocked in next(loader) over the training loop's time.
        "data_wait_share": statistics.median(shares[1:]),
        # Inferred: the slowdown from real data, for a cross-check.
        "data_wait_share_from_speeds": max(0.0, 1.0 - e2e_img_s / model_img_s),
    }


# ------------------------------------------------------------------------------- --fit
class _FitClock(Hook):
    """Clocks a whole fit: its start, its epochs, and its end (export, final report).

    The epochs run from the first epoch's start until the artefact writer has done all it may
    after the last one: plots drawn in the background are work the epochs caused, so they
    count. The plots fit start queued are drawn before the first epoch starts and count in
    fit start; the redraws the writer's budget held back are drawn at fit end and count there.
    """

    order = -(10**9)  # before every other hook at each event

    def __init__(self) -> None:
        self.t_fit = self.t_epochs = self.t_drained = 0.0
        self.cpu_epochs = self.cpu_drained = 0.0  # this process's CPU time, all threads
        self.writer_epochs = self.writer_drained = 0.0  # the artefact writer's CPU time
        self.hooks_cpu = 0.0  # CPU time inside the other hooks' methods, once epochs began
        self.hooks_cpu_epochs = 0.0
        self.checkpoints: list[CheckpointHook] = []  # their background writes count too
        self.writes_epochs = 0.0

    def on_fit_start(self, engine: Engine) -> None:
        self.t_fit = time.perf_counter()

    def on_train_epoch_start(self, engine: Engine) -> None:
        if not self.t_epochs:
            # What fit start queued (the class-distribution plot) is drawn in fit start's time.
            artifacts_flush()
            self.t_epochs, self.cpu_epochs = time.perf_counter(), time.process_time()
            self.writer_epochs, self.hooks_cpu = writer_cpu_seconds(), 0.0
            self.writes_epochs = sum(h.write_cpu_s for h in self.checkpoints)

    def on_fit_end(self, engine: Engine) -> None:
        # The epochs' own drawing, done; the redraws the budget held back are drawn by the
        # hooks' own flush at fit end, and counted there, in no epoch's time.
        artifacts_settle()
        for h in self.checkpoints:
            h.wait()  # the last epoch's checkpoint is written in the epochs' time
        self.t_drained, self.cpu_drained = time.perf_counter(), time.process_time()
        self.writer_drained = writer_cpu_seconds()
        writes = sum(h.write_cpu_s for h in self.checkpoints) - self.writes_epochs
        self.hooks_cpu_epochs = self.hooks_cpu + writes  # before the other hooks' on_fit_end

    def time_hooks(self, hooks: Sequence[Hook]) -> None:
        """Add the CPU time of every method the ``hooks`` override to ``hooks_cpu`` (and, at
        fit end, that of the checkpoint hooks' background writes)."""

        def timed(fn: Callable[..., None]) -> Callable[..., None]:
            def call(*args: Any) -> None:
                t = time.thread_time()
                fn(*args)
                self.hooks_cpu += time.thread_time() - t

            return call

        self.checkpoints = [h for h in hooks if isinstance(h, CheckpointHook)]
        for h in hooks:
            for name in HOOK_METHODS:
                if getattr(type(h), name) is not getattr(Hook, name):
                    setattr(h, name, timed(getattr(h, name)))


def _data_settings(args: argparse.Namespace, settings: dict[str, Any]) -> tuple[str, int, int]:
    """Model, image size and batch size: the flags, else ``settings`` (train.py's defaults)."""
    return (
        args.model or settings["model"],
        args.img_size or settings["img_size"],
        args.batch_size or settings["batch_size"],
    )


def bench_fit(args: argparse.Namespace, device: torch.device, rounds: int) -> dict[str, Any]:
    """Whole fits with no hooks and with ``default_hooks``, alternated, on a real tree.

    Without ``--data`` it is the demo with its defaults, the shortest epochs a user meets.
    """
    root = args.data if args.data is not None else demo_dataset()
    # The demo's own settings, else the --data ones.
    settings = DEMO_DEFAULTS if args.data is None else DATA_DEFAULTS
    model, img_size, batch_size = _data_settings(args, settings)
    data = ImageFolderData(
        root,
        img_size=img_size,
        batch_size=batch_size,
        workers=args.workers,
        crop_scale=settings["crop_scale"],
    )
    epochs = args.epochs
    fits: dict[str, list[dict[str, float]]] = {"none": [], "hooks": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for kind in ("none", "hooks") if r % 2 == 0 else ("hooks", "none"):
                clock = _FitClock()
                hooks = hooks_for_bench(Path(tmp) / f"{kind}{r}", export=True)
                clock.time_hooks(hooks)
                torch.manual_seed(0)
                engine = Engine(
                    build_model(model, data.num_classes),
                    data,
                    max_epochs=epochs,
                    lr=settings["lr"],
                    device=device,
                    hooks=[clock, *(hooks if kind == "hooks" else [])],
                )
                t0 = time.perf_counter()
                with quiet():
                    engine.fit()
                t1 = time.perf_counter()
                fits[kind].append(
                    {
                        "epoch_s": (clock.t_drained - clock.t_epochs) / epochs,
                        "epoch_cpu_s": (clock.cpu_drained - clock.cpu_epochs) / epochs,
                        # From the first epoch's start to the end of the epochs: once-per-run
                        # work (fit-start tables, ONNX export) is left out.
                        "hooks_cpu_s": clock.hooks_cpu_epochs / epochs,
                        "writer_cpu_s": (clock.writer_drained - clock.writer_epochs) / epochs,
                        "fit_start_s": clock.t_epochs - t0,
                        "fit_end_s": t1 - clock.t_drained,
                    }
                )
    pairs = list(zip(fits["hooks"], fits["none"], strict=True))
    ratios = [h["epoch_s"] / n["epoch_s"] for h, n in pairs]
    cpu_ratios = [h["epoch_cpu_s"] / n["epoch_cpu_s"] for h, n in pairs]

    def med(kind: str, key: str) -> float:
        return statistics.median(f[key] for f in fits[kind])

    return {
        "root": str(root),
        "model": model,
        "img_size": img_size,
        "batch_size": batch_size,
        "epochs": epochs,
        "rounds": rounds,
        "epoch_s_none": med("none", "epoch_s"),
        "epoch_s_hooks": med("hooks", "epoch_s"),
        "hooks_overhead": statistics.median(ratios) - 1.0,
        "hooks_overhead_per_round": [x - 1.0 for x in ratios],
        # CPU time of the training process (all its threads, not the loader workers):
        # steadier than wall time where other tenants share the machine.
        "epoch_cpu_s_none": med("none", "epoch_cpu_s"),
        "epoch_cpu_s_hooks": med("hooks", "epoch_cpu_s"),
        "hooks_cpu_overhead": statistics.median(cpu_ratios) - 1.0,
        "hooks_cpu_overhead_per_round": [x - 1.0 for x in cpu_ratios],
        # What the hooks themselves spent per epoch: their methods on the training thread
        # with the checkpoint writes, and the artefact writer thread (plots, report).
        "hook_methods_cpu_s": med("hooks", "hooks_cpu_s"),
        "writer_cpu_s": med("hooks", "writer_cpu_s"),
        "hooks_own_cpu_share": (med("hooks", "hooks_cpu_s") + med("hooks", "writer_cpu_s"))
        / med("none", "epoch_s"),
        "fit_start_s_none": med("none", "fit_start_s"),
        "fit_start_s_hooks": med("hooks", "fit_start_s"),
        "fit_end_s_none": med("none", "fit_end_s"),
        "fit_end_s_hooks": med("hooks", "fit_end_s"),
    }


# ---------------------------------------------------------------------------------- output
def print_results(results: list[dict[str, Any]], device: torch.device, precision: str) -> None:
    from rich.console import Console  # deferred, as in the hooks
    from rich.table import Table

    console = Console()
    table = Table(title=f"Training throughput, img/s ({device}, precision {precision})")
    for col in (
        "workload",
        "bare",
        "engine",
        "+hooks",
        "epoch: engine",
        "epoch: +hooks",
        "epoch end s",
    ):
        table.add_column(col, justify="left" if col == "workload" else "right")
    for r in results:
        table.add_row(
            r["name"],
            f"{r['bare_img_s']:.0f}",
            f"{r['engine_img_s']:.0f} ({r['ratio_engine']:.3f}x)",
            f"{r['engine_hooks_img_s']:.0f} ({r['ratio_hooks']:.3f}x)",
            f"{r['ratio_engine_epoch']:.3f}x",
            f"{r['ratio_hooks_epoch']:.3f}x",
            f"{r['bare_epoch_end_s']:.2f} / {r['hooks_epoch_end_s']:.2f}",
        )
    table.caption = (
        "step: training loop only (median of rounds; ratio = median of per-round ratios to bare). "
        "epoch: whole-epoch wall incl. validation and epoch-end hooks; 'epoch end s' = seconds "
        "per epoch beyond the training loop, bare / +hooks. +hooks = default_hooks minus ONNX "
        "export (once per fit), progress bar on."
    )
    console.print(table)
    for r in results:
        extra = []
        if "ema_cost" in r:
            extra.append(
                f"EMA 0.999: {r['ema_img_s']:.0f} img/s, {100 * r['ema_cost']:.1f}% of step time"
            )
        if "compile_s" in r:
            extra.append(
                f"compile: {r['compile_img_s']:.0f} img/s steady "
                f"({r['ratio_compile']:.3f}x bare), first epoch +{r['compile_s']:.1f} s"
            )
        if "lightning_img_s" in r:
            extra.append(
                f"Lightning: {r['lightning_img_s']:.0f} img/s "
                f"({r['ratio_lightning']:.3f}x bare, not interleaved)"
            )
        if "lightning_note" in r:
            extra.append(r["lightning_note"])
        if extra:
            console.print(f"{r['name']}: " + "; ".join(extra))


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
    table.add_row("end to end", f"{d['end_to_end_img_s']:.0f} img/s")
    table.add_row("waiting for data (measured)", f"{100 * d['data_wait_share']:.1f}%")
    table.add_row(
        "slowdown from data (1 - e2e/model)", f"{100 * d['data_wait_share_from_speeds']:.1f}%"
    )
    Console().print(table)


def print_fit(f: dict[str, Any], device: torch.device) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{f['root']}: {f['model']} {f['img_size']}px b{f['batch_size']}, {f['epochs']} "
        f"epochs, {f['rounds']} fits each ({device})"
    )
    table.add_column("")
    table.add_column("no hooks", justify="right")
    table.add_column("default hooks", justify="right")
    table.add_row("s per epoch", f"{f['epoch_s_none']:.3f}", f"{f['epoch_s_hooks']:.3f}")
    table.add_row(
        "CPU s per epoch", f"{f['epoch_cpu_s_none']:.3f}", f"{f['epoch_cpu_s_hooks']:.3f}"
    )
    table.add_row(
        "hooks (methods, checkpoint writes) / plot writer, CPU ms per epoch",
        "",
        f"{1000 * f['hook_methods_cpu_s']:.0f} / {1000 * f['writer_cpu_s']:.0f} "
        f"({100 * f['hooks_own_cpu_share']:.1f}% of an epoch)",
    )
    table.add_row("fit start, s", f"{f['fit_start_s_none']:.2f}", f"{f['fit_start_s_hooks']:.2f}")
    table.add_row("fit end, s", f"{f['fit_end_s_none']:.2f}", f"{f['fit_end_s_hooks']:.2f}")
    per_round = ", ".join(f"{100 * x:+.1f}%" for x in f["hooks_overhead_per_round"])
    cpu_round = ", ".join(f"{100 * x:+.1f}%" for x in f["hooks_cpu_overhead_per_round"])
    table.caption = (
        f"epoch time with the default hooks: {100 * f['hooks_overhead']:+.1f}% "
        f"(median of paired fits: {per_round}); CPU time {100 * f['hooks_cpu_overhead']:+.1f}% "
        f"({cpu_round}). Epochs run until the artefact writer has drawn all it may (redraws "
        "its budget holds back are drawn at fit end); fit start/end "
        "(tables and the class-distribution plot, sanity check, ONNX export, final report) are "
        "once per run."
    )
    Console().print(table)


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/bench.py",
        description="Throughput of the Engine (no hooks, default hooks) against a hand-written "
        "loop, interleaved in one process; or, with --data, a real tree end to end.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="workloads to run; default gpu when CUDA is there, else cpu",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default="auto", help="32, 16-mixed, bf16-mixed or auto")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timed epochs per run after a warm-up epoch (default: the preset's)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training batches per epoch (default: the preset's; with --data, all)",
    )
    p.add_argument("--ema", action="store_true", help="also time the Engine with ema_decay=0.999")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the Engine with torch.compile; compile time shown apart",
    )
    p.add_argument(
        "--lightning",
        action="store_true",
        help="also time the workload under Lightning, if it is installed",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the results to this file (rewritten after each workload)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: time the main thread's CPU time (with --threads 1 on --device cpu), which "
        "other processes on a shared machine barely disturb",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; 1 gives steadier ratios on a shared machine",
    )
    g = p.add_argument_group(
        "--data and --fit: a real ImageFolder tree (model, size and batch default to resnet18, "
        "224 and 64; for --fit without --data, to the demo's settings)"
    )
    g.add_argument("--data", type=Path, default=None, help="the tree's root")
    g.add_argument(
        "--fit",
        action="store_true",
        help="whole fits with no hooks and with the default hooks, alternated: the hooks' "
        "share of epoch time (default tree: the built-in demo)",
    )
    g.add_argument("--epochs", type=int, default=4, help="epochs per fit, with --fit")
    g.add_argument("--model", default=None, choices=sorted(MODELS))
    g.add_argument("--img-size", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--workers", type=int, default=None, help="loader processes")
    g.add_argument(
        "--decode",
        choices=("cpu", "gpu"),
        default="cpu",
        help="with --data: gpu decodes the training JPEGs on the GPU (as train.py --decode)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # As train.py does: without it, whether a process pays ~500k page faults per CPU epoch
    # depends on its allocation history, which made paired fits differ by up to 15%.
    steady_malloc()
    for flag in ("rounds", "steps", "threads", "epochs"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            print(f"error: --{flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        precision = resolve_precision(args.precision, device)
        if args.clock == "cpu" and (device.type != "cpu" or torch.get_num_threads() != 1):
            print(
                "error: --clock cpu needs --device cpu --threads 1 (it times one thread)",
                file=sys.stderr,
            )
            return 2
        meta = {
            "device": str(device),
            "precision": precision,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "clock": args.clock,
        }
        if args.fit:
            f = bench_fit(args, device, args.rounds or 3)
            print_fit(f, device)
            if args.json is not None:
                atomic_write_json(args.json, {"workloads": [], "fit": f, **meta})
            return 0
        if args.data is not None:
            d = bench_data(args, device, precision, args.rounds or 3)
            print_data(d)
            if args.json is not None:
                atomic_write_json(args.json, {"workloads": [], "data": d, **meta})
            return 0
        name = args.preset or ("gpu" if device.type == "cuda" else "cpu")
        preset = PRESETS[name]
        results: list[dict[str, Any]] = []
        for w in preset.workloads:
            if args.steps is not None:
                w = Workload(
                    w.model, w.img_size, w.batch_size, args.steps, w.num_classes, w.val_batches
                )
            print(f"benchmarking {w.name} ...", file=sys.stderr, flush=True)
            results.append(bench_workload(w, device, precision, args.rounds or preset.rounds, args))
            if args.json is not None:  # after each workload: a run cut short keeps the rest
                atomic_write_json(args.json, {"workloads": results, "preset": name, **meta})
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_results(results, device, precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
