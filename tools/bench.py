"""Training throughput of the Engine against a hand-written loop, side by side in one process.

python tools/bench.py --preset cpu            # small_cnn and resnet18, about 2 minutes on 2 cores
python tools/bench.py --preset cpu --threads 1 --clock cpu   # steadier on a shared machine
python tools/bench.py --preset gpu --ema --lightning --json bench.json
python tools/bench.py --preset gpu --compile  # compile time apart from steady-state speed
python tools/bench.py --data DIR --model resnet18 --img-size 224 --batch-size 64 [--decode gpu]
python tools/bench.py --loader DIR [--cache disk]  # our training loader vs torchvision's
python tools/bench.py --fit --epochs 15       # the default hooks' share of epoch time, on the demo
python tools/bench.py --startup --classes 1000 --train-per-class 10 --val-per-class 2
                                              # launch to first step (and resume) vs the reference

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

``--loader DIR`` times the training loaders alone, no model: torchvision's ImageFolder pipeline
(PILToTensor, RandomResizedCrop, RandomHorizontalFlip) against ours, interleaved, with the
same batch size and workers (default 2), and prints img/s and the ratio; ``--cache disk``
adds ours reading through a fresh disk cache (filled in its warm-up epoch). Trees of camera-
sized photos: tools/benchmarks/photo_tree.py (see tools/benchmarks/bench_loader.py).

``--startup`` times start-up on a generated tree: from launch to the first training step of
tools/train.py (check cache cold and warm) and of a resume, against importing torch and
torchvision plus torchvision's ImageFolder scan of the same tree; and the memory of the main
process and of each loader worker (see tools/benchmarks/bench_startup.py).

The modes live in tools/benchmarks/: bench_steps.py (the presets), bench_data.py (``--data``),
bench_fit.py (``--fit``) and bench_startup.py (``--startup``); what they share, in
bench_common.py. This file is the command line.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python tools/bench.py), not imported as tools.bench
    # Python put tools/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p).resolve() != _here)]

import torch

from tools.benchmarks.bench_common import Workload
from tools.benchmarks.bench_data import bench_data, print_data
from tools.benchmarks.bench_fit import bench_fit, print_fit
from tools.benchmarks.bench_loader import bench_loader, print_loader
from tools.benchmarks.bench_startup import bench_startup, print_startup
from tools.benchmarks.bench_steps import PRESETS, bench_workload, print_results
from tools.runtime import steady_malloc
from trainer.config_cli import program_name
from trainer.device import resolve_device, resolve_precision
from trainer.errors import UserError
from trainer.io import atomic_write_json
from trainer.models import MODELS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("tools/bench.py"),
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
        "--label-issues",
        action="store_true",
        help="also time the default hooks with --find-label-issues's hook, against without",
    )
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
    g.add_argument(
        "--model",
        default=None,
        choices=sorted(MODELS),
        help="the model; with --preset, only the preset's workloads of this model",
    )
    g.add_argument("--img-size", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--workers", type=int, default=None, help="loader processes")
    g.add_argument(
        "--decode",
        choices=("cpu", "gpu"),
        default="cpu",
        help="with --data: gpu decodes the training JPEGs on the GPU (as train.py --decode)",
    )
    g = p.add_argument_group(
        "--loader: our training loader against torchvision's, alone (img size, batch size and "
        "workers default to 224, 64 and 2)"
    )
    g.add_argument("--loader", type=Path, default=None, help="the tree's root")
    g.add_argument(
        "--cache",
        choices=("none", "disk"),
        default="none",
        help="disk: also time ours with --cache disk (in a fresh cache folder), after the "
        "epoch that fills it",
    )
    g = p.add_argument_group(
        "--startup: launch to first training step, against importing torch and torchvision "
        "plus torchvision's ImageFolder scan, on a generated tree of small JPEGs"
    )
    g.add_argument(
        "--startup", action="store_true", help="time start-up (tools/benchmarks/bench_startup.py)"
    )
    g.add_argument("--classes", type=int, default=1000, help="classes of the generated tree")
    g.add_argument("--train-per-class", type=int, default=10, help="train images per class")
    g.add_argument("--val-per-class", type=int, default=2, help="val images per class")
    g.add_argument(
        "--tree-dir",
        type=Path,
        default=None,
        help="where the tree is generated (once); default a folder named by its shape in /tmp",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # As train.py does: without it, whether a process pays ~500k page faults per CPU epoch
    # depends on its allocation history, which made paired fits differ by up to 15%.
    steady_malloc()
    for flag in ("rounds", "steps", "threads", "epochs", "classes", "train_per_class"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            print(f"error: --{flag.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
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
            "card": _card(device),
            "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
            "date": time.strftime("%Y-%m-%d"),
        }
        if args.startup:
            s = bench_startup(_startup_defaults(args))
            print_startup(s)
            if args.json is not None:
                atomic_write_json(args.json, {"workloads": [], "startup": s, **meta})
            return 0
        if args.fit:
            f = bench_fit(args, device, args.rounds or 3)
            print_fit(f, device)
            if args.json is not None:
                atomic_write_json(args.json, {"workloads": [], "fit": f, **meta})
            return 0
        if args.loader is not None:
            ld = bench_loader(args, args.rounds or 3)
            print_loader(ld)
            if args.json is not None:
                atomic_write_json(args.json, {"workloads": [], "loader": ld, **meta})
            return 0
        if args.data is not None:
            d = bench_data(args, device, precision, args.rounds or 3)
            print_data(d)
            if args.json is not None:
                atomic_write_json(args.json, {"workloads": [], "data": d, **meta})
            return 0
        name = args.preset or ("gpu" if device.type == "cuda" else "cpu")
        preset = PRESETS[name]
        workloads = [w for w in preset.workloads if args.model in (None, w.model)]
        if not workloads:
            models = sorted({w.model for w in preset.workloads})
            raise UserError(f"--preset {name} has no {args.model} workload; it has {models}")
        results: list[dict[str, Any]] = []
        for w in workloads:
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


def _card(device: torch.device) -> str:
    """The accelerator's name (the figures hold for that card), else the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _startup_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """--startup trains small_cnn on 32 px crops in batches of 64 unless told otherwise: the
    figures are about start-up, which the model barely changes."""
    args.model = args.model or "small_cnn"
    args.img_size = args.img_size or 32
    args.batch_size = args.batch_size or 64
    args.workers = 2 if args.workers is None else args.workers
    args.rounds = args.rounds or 2
    return args


if __name__ == "__main__":
    sys.exit(main())
