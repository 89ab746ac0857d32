"""The ``--startup`` mode of tools/bench.py: from launch to the first training step.

On a generated tree of ``--classes`` classes with ``--train-per-class`` and
``--val-per-class`` small JPEGs each (written once under ``--tree-dir``, then reused), every
figure is the wall time from starting a fresh Python process to an event in it:

  reference      import torch and torchvision, then ``torchvision.datasets.ImageFolder``
                 scans train/ and val/: the least any trainer on this tree must spend.
  first step     ``tools/train.py`` (the CLI defaults, the given workers) up to the end of
                 its first training step, with the caches of the image check and the scan empty ("cold", the
                 first run on a tree) and filled ("warm", a second run on the same files).
  resume         ``tools/train.py --resume`` of a finished first epoch, to its first step.

Every timed run has the default outputs on (the ONNX export off), as a user gets them; the
first epoch the resume needs runs with the optional outputs off, which keeps it short.

The runs alternate within each round, so a busy machine slows them alike; a ratio is the
median over rounds of that round's ratio to its reference. The first-epoch run (which the
resume needs) also reports memory at its epoch end: the main process's peak RSS and, per
loader worker, its peak RSS and its private memory (what it does not share with the main
process: this is what would grow with the tree if the workers copied the sample list).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = "IMGTRAINER_CHECK_CACHE"
OPTIONAL_OUTPUTS = ("confusion-matrix", "dataset-stats", "model-info", "history-plots",
                    "sampler-stats", "samples", "report")  # fmt: skip

_REFERENCE = """
import json, sys, time
import torch, torchvision
from torchvision.datasets import ImageFolder
n = len(ImageFolder(sys.argv[1] + "/train")) + len(ImageFolder(sys.argv[1] + "/val"))
print(json.dumps({"t": time.time(), "images": n}), flush=True)
"""


def make_tree(root: Path, classes: int, train: int, val: int, size: int = 48) -> Path:
    """``root/{train,val}/c<k>/<i>.jpg``: small JPEGs, written once (a marker file says done)."""
    marker = root / ".complete"
    if marker.is_file():
        return root
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(64):  # a few distinct images, reused: only the file count matters here
        arr = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).resize((size, size)).save(buf, "JPEG", quality=85)
        blobs.append(buf.getvalue())
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"c{c:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{i:05d}.jpg").write_bytes(blobs[(c * 7 + i) % len(blobs)])
    marker.write_text("ok\n")
    return root


def _memory(pid: int) -> dict[str, int]:
    """Peak RSS (VmHWM) and private memory (smaps_rollup) of ``pid``, in KiB."""
    out = {"peak_rss_kib": 0, "private_kib": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_kib"] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                out["private_kib"] += int(line.split()[1])
    except OSError:
        pass
    return out


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def child_main(argv: list[str]) -> None:
    """In the measured process: tools/train.py with a hook that reports the first step.

    ``argv``: ``exit_at_first_step`` ("1" or "0"), then train.py's arguments.
    """
    exit_early = argv[0] == "1"
    import tools.train as train  # the real CLI module, flags and all
    from trainer.hook import Hook

    class _Report(Hook):
        order = 10**9
        stepped = False

        def on_train_batch_end(self, engine: Any, outputs: Any, batch: Any, idx: int) -> None:
            if not self.stepped:
                self.stepped = True
                print(json.dumps({"first_step": time.time()}), flush=True)
                if exit_early:
                    for pid in _children(os.getpid()):
                        os.kill(pid, 9)
                    os._exit(0)

        def on_train_epoch_end(self, engine: Any) -> None:
            workers = [_memory(p) for p in _children(os.getpid())]
            print(json.dumps({"main": _memory(os.getpid()), "workers": workers}), flush=True)

    make_hooks = train.default_hooks
    train.default_hooks = lambda *a, **k: [*make_hooks(*a, **k), _Report()]
    sys.exit(train.main(argv[1:]))


def _timed(cmd: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    """Run ``cmd``; the JSON lines it printed, times made relative to its launch, and as
    ``cpu`` the CPU seconds of it and the children it waited for (a steadier figure on a
    shared machine, though it leaves out the loader workers' share)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    for d in lines:
        for k in ("t", "first_step"):
            if k in d:
                d[k] -= t0
    lines[0]["cpu"] = cpu
    return lines


def bench_startup(args: argparse.Namespace) -> dict[str, Any]:
    """Generate (or reuse) the tree, then time the reference, first steps and resumes."""
    n_files = args.classes * (args.train_per_class + args.val_per_class)
    tree = args.tree_dir or Path(tempfile.gettempdir()) / (
        f"imgtrainer_startup_{args.classes}x{args.train_per_class}x{args.val_per_class}"
    )
    t = time.perf_counter()
    make_tree(Path(tree), args.classes, args.train_per_class, args.val_per_class)
    print(f"tree {tree}: {n_files} files ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="imgtrainer_startup_"))
    cache = work / "check_cache"
    env = {**os.environ, CACHE_ENV: str(cache), "PYTHONPATH": str(ROOT)}
    flags = ["--data", str(tree), "--workers", str(args.workers), "--quiet", "--device", "cpu"]
    flags += ["--model", args.model, "--img-size", str(args.img_size), "--no-export"]
    flags += ["--batch-size", str(args.batch_size)]
    me = [sys.executable, "-m", "tools.benchmarks.bench_startup", "child"]
    try:
        first = work / "first"
        print("first epoch (cold cache), for the resume ...", file=sys.stderr, flush=True)
        # Only its checkpoint and memory matter: without the optional outputs, whose drawing
        # for many classes would make the epoch long.
        outputs_off = [f"--no-{o}" for o in OPTIONAL_OUTPUTS]
        done = _timed([*me, "0", *flags, *outputs_off, "--out", str(first), "--epochs", "1"], env)
        memory = next(d for d in done if "main" in d)
        cold_once = next(d["first_step"] for d in done if "first_step" in d)
        rows: dict[str, list[float]] = {k: [] for k in ("reference", "cold", "warm", "resume")}
        cpu: dict[str, list[float]] = {k: [] for k in rows}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            reference = _timed([sys.executable, "-c", _REFERENCE, str(tree)], env)[0]
            rows["reference"].append(reference["t"])
            cpu["reference"].append(reference["cpu"])
            shutil.rmtree(cache, ignore_errors=True)
            for key, extra in (
                ("cold", ["--out", str(work / f"cold{r}")]),
                ("warm", ["--out", str(work / f"warm{r}")]),
                ("resume", ["--resume", str(first), "--epochs", "2"]),
            ):
                got = _timed([*me, "1", *flags, *extra], env)[0]
                rows[key].append(got["first_step"])
                cpu[key].append(got["cpu"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref = rows["reference"]

    def ratio(key: str) -> float:
        return statistics.median(x / y for x, y in zip(rows[key], ref, strict=True))

    return {
        "tree": str(tree),
        "files": n_files,
        "classes": args.classes,
        "workers": args.workers,
        "rounds": args.rounds,
        "reference_s": statistics.median(ref),
        "first_step_cold_s": statistics.median(rows["cold"]),
        "first_step_warm_s": statistics.median(rows["warm"]),
        "resume_s": statistics.median(rows["resume"]),
        "first_epoch_first_step_s": cold_once,
        "ratio_cold": ratio("cold"),
        "ratio_warm": ratio("warm"),
        "ratio_resume": ratio("resume"),
        "main_peak_rss_mib": memory["main"]["peak_rss_kib"] / 1024,
        "workers_peak_rss_mib": [w["peak_rss_kib"] / 1024 for w in memory["workers"]],
        "workers_private_mib": [w["private_kib"] / 1024 for w in memory["workers"]],
        "runs": rows,
        "cpu_s": cpu,
    }


def print_startup(d: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{d['tree']}: {d['files']} files, {d['workers']} workers, "
                  f"median of {d['rounds']} round(s)")  # fmt: skip
    table.add_column("from launch to")
    table.add_column("seconds", justify="right")
    table.add_column("x reference", justify="right")
    table.add_row(
        "reference: import torch+torchvision, ImageFolder scan", f"{d['reference_s']:.2f}", "1.00"
    )
    table.add_row(
        "first step, cold check cache", f"{d['first_step_cold_s']:.2f}", f"{d['ratio_cold']:.2f}"
    )
    table.add_row(
        "first step, warm check cache", f"{d['first_step_warm_s']:.2f}", f"{d['ratio_warm']:.2f}"
    )
    table.add_row("first step of a resume", f"{d['resume_s']:.2f}", f"{d['ratio_resume']:.2f}")
    Console().print(table)
    workers = ", ".join(
        f"{p:.0f} MiB peak / {q:.0f} MiB private"
        for p, q in zip(d["workers_peak_rss_mib"], d["workers_private_mib"], strict=True)
    )
    Console().print(
        f"memory at the end of the first epoch: main process peak RSS "
        f"{d['main_peak_rss_mib']:.0f} MiB; workers: {workers or 'none'}"
    )


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    child_main(sys.argv[2:])
