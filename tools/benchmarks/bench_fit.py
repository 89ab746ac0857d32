"""The ``--fit`` mode of tools/bench.py: whole fits with no hooks and with the default hooks.

The fits alternate, and each epoch's time runs until the artefact writer has drawn what the
epoch queued, so it holds everything the default hooks cost per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from hooks import CheckpointHook
from tools.benchmarks.bench_common import data_settings, hooks_for_bench, quiet
from trainer.data import ImageFolderData
from trainer.data.demo import DATA_DEFAULTS, DEMO_DEFAULTS, demo_dataset
from trainer.engine import Engine
from trainer.hook import HOOK_METHODS, Hook
from trainer.models import build_model


class _FitClock(Hook):
    """Clocks a whole fit: its start, its epochs, and its end (export, final report).

    The epochs run from the first epoch's start until the artefact writer has drawn all they
    asked for: plots drawn in the background are work the epochs caused, so they count. The
    plots fit start queued are drawn before the first epoch starts and count in fit start.
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
            engine.artifacts.flush()
            self.t_epochs, self.cpu_epochs = time.perf_counter(), time.process_time()
            self.writer_epochs, self.hooks_cpu = engine.artifacts.cpu_seconds, 0.0
            self.writes_epochs = sum(h.write_cpu_s for h in self.checkpoints)

    def on_fit_end(self, engine: Engine) -> None:
        engine.artifacts.flush()  # the epochs' own drawing, done
        for h in self.checkpoints:
            h.wait()  # the last epoch's checkpoint is written in the epochs' time
        self.t_drained, self.cpu_drained = time.perf_counter(), time.process_time()
        self.writer_drained = engine.artifacts.cpu_seconds
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


def bench_fit(args: argparse.Namespace, device: torch.device, rounds: int) -> dict[str, Any]:
    """Whole fits with no hooks and with ``default_hooks``, alternated, on a real tree.

    Without ``--data`` it is the demo with its defaults, the shortest epochs a user meets.
    """
    root = args.data if args.data is not None else demo_dataset()
    # The demo's own settings, else the --data ones.
    settings = DEMO_DEFAULTS if args.data is None else DATA_DEFAULTS
    model, img_size, batch_size = data_settings(args, settings)
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
        f"({cpu_round}). Epochs run until the artefact writer has drawn all they queued; fit "
        "start/end (tables and the class-distribution plot, sanity check, ONNX export, final "
        "report) are once per run."
    )
    Console().print(table)
