"""The step-ratio mode of tools/bench.py: bare loop, Engine and Engine + hooks, interleaved.

Each preset workload is trained by a hand-written loop (``BareLoop``) and by the Engine with
and without the default hooks (and, on request, with EMA, torch.compile or under Lightning);
``bench_workload`` reports their speeds and their paired ratios to the bare loop.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hooks.label_issues import LabelIssuesHook
from tools.benchmarks.bench_common import (
    LABEL_SMOOTHING,
    LR,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
    Clock,
    DeviceBatches,
    EngineRun,
    EpochTime,
    RunTimes,
    Workload,
    hooks_for_bench,
    interleave,
    paired_ratio,
    quiet,
    speed,
    sync,
)
from trainer.device import autocast_dtype
from trainer.models import build_model
from trainer.optim import default_optimizer, warmup_cosine


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


# ---------------------------------------------------------------------------------- runs
class BareLoop:
    """The minimal hand-written loop the Engine is measured against.

    It does the work any loop must do and nothing more: no metric sums, no hooks, one host
    read per epoch. Same optimizer groups, scheduler, loss, precision and memory format as
    the Engine.
    """

    def __init__(
        self,
        w: Workload,
        data: DeviceBatches,
        device: torch.device,
        precision: str,
        epochs: int,
        clock: Clock = time.perf_counter,
        compile: bool = False,
    ) -> None:
        torch.manual_seed(0)
        self.name = "bare_compile" if compile else "bare"
        self.device, self.data, self.clock = device, data, clock
        # As the Engine decides: NHWC where cuDNN / oneDNN are faster with it, cuDNN autotuning.
        self.channels_last = device.type in ("cuda", "cpu")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = build_model(w.model, w.num_classes).to(device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        # As the Engine compiles: the training forward, static shapes.
        self.forward: Any = torch.compile(self.model, dynamic=False) if compile else self.model
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
                loss = self.loss_fn(self.forward(self._prep(x)), y)
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
        sync(self.device)
        train_s = self.clock() - t0
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        with torch.no_grad():
            for x, y in self.data.val:
                with self._autocast():
                    correct += (self.model(self._prep(x)).argmax(1) == y).sum()
        correct.item()
        return EpochTime(images, train_s, self.clock() - t0)


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
    pl: Any = None  # typed loosely: the checks must pass with Lightning installed or not
    for name in ("lightning.pytorch", "pytorch_lightning"):
        with contextlib.suppress(ImportError):
            pl = importlib.import_module(name)
            break
    if pl is None:
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
            sync(device)  # Lightning validates inside the training epoch
            self.t1 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            sync(device)
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
        if getattr(args, "label_issues", False):
            # Both on batches that name their samples, so LabelIssuesHook records: the one
            # without it is the baseline, and beside the plain "hooks" run, the noise.
            named = IndexedData(data, w.batch_size)
            runs.append(EngineRun("indexed", w, named, device, precision, epochs,
                                  hooks_for_bench(Path(tmp, "i")), clock=clock))  # fmt: skip
            with_issues = [*hooks_for_bench(Path(tmp, "l")), LabelIssuesHook(Path(tmp, "l"))]
            runs.append(EngineRun("labels", w, named, device, precision, epochs, with_issues,
                                  clock=clock))  # fmt: skip
        if args.compile:
            runs.append(
                EngineRun("compile", w, data, device, precision, epochs, clock=clock, compile=True)
            )
            runs.append(BareLoop(w, data, device, precision, epochs, clock, compile=True))
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
            speed(h, False) / speed(b, False)
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
    if "labels" in times:
        labels, indexed = times["labels"], times["indexed"]
        result["labels_img_s"] = labels.img_s()
        # Step speed with --find-label-issues over the same hooks without it, same round; and
        # the same for two runs that differ in nothing that matters: the noise.
        result["ratio_labels"] = paired_ratio(labels, indexed)
        result["ratio_labels_range"] = _ratio_range(labels, indexed)
        result["ratio_noise_range"] = _ratio_range(indexed, hooks)
    if "compile" in times:
        c = times["compile"]
        result["compile_img_s"] = c.img_s()
        result["ratio_compile"] = paired_ratio(c, bare)
        result["ratio_compile_engine"] = paired_ratio(c, engine)  # against the eager Engine
        # The warm-up epoch's extra time over a steady epoch is what compiling cost.
        assert c.first is not None
        result["compile_s"] = c.first.wall_s - statistics.median(e.wall_s for e in c.epochs)
        bc = times["bare_compile"]
        result["bare_compile_img_s"] = bc.img_s()
        # (Its compile time is not given: it reuses the Engine's, from inductor's cache.)
        result["ratio_bare_compile"] = paired_ratio(bc, bare)
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


def _ratio_range(a: Any, b: Any) -> tuple[float, float]:
    """The smallest and largest per-round step-speed ratio of ``a`` to ``b``."""
    ratios = [speed(x, False) / speed(y, False) for x, y in zip(a.epochs, b.epochs, strict=True)]
    return min(ratios), max(ratios)


class IndexedBatches:
    """Training batches that name their samples, as ``SkippingLoader.indices`` does (batch
    ``i`` holds samples ``i * batch_size ...``), for LabelIssuesHook to record."""

    def __init__(self, batches: list[Any], batch_size: int) -> None:
        self.batches = batches
        self.dataset = range(len(batches) * batch_size)
        self._index = [torch.arange(i * batch_size, (i + 1) * batch_size) for i in range(len(batches))]
        self.indices: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for batch, index in zip(self.batches, self._index, strict=True):
            self.indices = index
            yield batch


class IndexedData:
    """``DeviceBatches`` whose training loader is ``IndexedBatches``."""

    def __init__(self, data: Any, batch_size: int) -> None:
        self._data = data
        self._loader = IndexedBatches(data.train, batch_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    def train_loader(self) -> IndexedBatches:
        return self._loader


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
                f"compile: {r['compile_img_s']:.0f} img/s steady ({r['ratio_compile']:.3f}x "
                f"bare, {r['ratio_compile_engine']:.3f}x the eager Engine), first epoch "
                f"+{r['compile_s']:.1f} s; bare loop compiled: {r['bare_compile_img_s']:.0f} "
                f"img/s ({r['ratio_bare_compile']:.3f}x bare)"
            )
        if "ratio_labels" in r:
            lo, hi = r["ratio_labels_range"]
            nlo, nhi = r["ratio_noise_range"]
            extra.append(
                f"--find-label-issues: {r['labels_img_s']:.0f} img/s, step speed "
                f"{r['ratio_labels']:.3f}x without it (rounds {lo:.3f}-{hi:.3f}; two runs "
                f"without it: {nlo:.3f}-{nhi:.3f})"
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
