"""Benchmark a run's exported formats and its PyTorch model on this machine's CPU.

Usage:
    python tools/export.py runs/demo --formats onnx,onnx-fp16,onnx-int8,openvino
    python tools/benchmark.py runs/demo
    python tools/benchmark.py runs/demo --threads 1 --num-images 512

For the PyTorch eager model (the run's best checkpoint, with the weights the export took) and
each format found in the run folder (``model.onnx``, ``model.fp16.onnx``, ``model.int8.onnx``,
``openvino/model.xml``, or their ``FAILED`` names), a row: file size, latency p50/p95 at batch
1, throughput at a batch of 32, in the format's own runtime, with the same number of threads
for all; validation accuracy and top-1 agreement with PyTorch, on a seeded sample of the run's
validation images, preprocessed as the model's labels mapping says. For a multi-label model
those two columns are val mAP and the per-label agreement at the model's thresholds (the
header says so, and ``benchmark.json`` names them: ``"metric"``, ``"agreement"``). The table, the machine and
the thread count are printed, and everything goes to ``benchmark.json`` in the run folder.
The rows are timed one after the other: compare their ratios, and expect absolute figures to
move with the machine's load (``benchmark.json`` records the load average). Exit status: 0,
or 2 for a mistake in the arguments or inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python tools/benchmark.py), not imported as tools.benchmark
    # Python put tools/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p).resolve() != _here)]

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tools.export import resolve_checkpoint, run_data
from trainer.checkpoint import load_checkpoint
from trainer.config_cli import program_name
from trainer.errors import DataError, UserError
from trainer.export_bench import benchmark, machine, ratios
from trainer.export_check import mapping_thresholds, sample_images
from trainer.io import atomic_write_json
from trainer.onnx_classifier import OnnxClassifier
from trainer.restore import model_from_checkpoint
from trainer.run_files import EXPORT_REPORT_JSON, MODEL_ONNX

log = logging.getLogger("trainer")

BENCHMARK_JSON = "benchmark.json"
# The targets for INT8 against fp32 ONNX on the CPU.
INT8_THROUGHPUT_TARGET = 1.3
INT8_SIZE_TARGET = 0.35


def run_benchmark(
    run: str | os.PathLike[str],
    *,
    data: str | os.PathLike[str] | None = None,
    num_images: int = 256,
    threads: int | None = None,
    batch_size: int = 32,
    latency_runs: int = 50,
    throughput_batches: int = 10,
) -> dict[str, Any]:
    """Benchmark the formats exported into the run folder ``run``; write ``benchmark.json``.

    Args:
        run: a run folder holding ``model.onnx`` (``tools/export.py RUN --formats ...``).
        data: the tree or label file whose validation images to use; None: the run's.
        num_images: validation images to score on (a seeded sample), and to time with.
        threads: intra-op threads for every runtime; None: torch's default here.
        batch_size: the batch of the throughput figure.
        latency_runs: batch-1 calls timed for the latency percentiles.
        throughput_batches: batches timed for the throughput.

    Returns:
        What ``benchmark.json`` holds: ``machine``, ``rows``, ``int8_vs_fp32`` and the
        settings.

    Raises:
        UserError: no run folder, no exported model, no validation images.
    """
    for name, value in (("--num-images", num_images), ("--batch-size", batch_size),
                        ("--runs", latency_runs), ("--batches", throughput_batches)):  # fmt: skip
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}.")
    run = Path(run)
    onnx_path = run / MODEL_ONNX
    if not run.is_dir():
        hint = (f"; for {run.name}, pass its folder: {run.parent}" if run.is_file() else "")
        raise UserError(
            f"{run} is not a run folder{'' if run.exists() else ' (it does not exist)'}: pass "
            f"the folder tools/train.py wrote (runs/NAME), which holds {MODEL_ONNX}{hint}."
        )
    if not onnx_path.is_file():
        raise UserError(
            f"{run} holds no {MODEL_ONNX} to benchmark. Export the run first: python "
            f"tools/export.py {run} --formats onnx,onnx-fp16,onnx-int8,openvino"
        )
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}.")
    report_path = run / EXPORT_REPORT_JSON
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    exported_from = Path(report.get("checkpoint") or run)
    checkpoint = resolve_checkpoint(exported_from if exported_from.is_file() else run)
    ckpt = load_checkpoint(checkpoint)
    # The weights the export took (EMA unless it was told otherwise).
    model, _ = model_from_checkpoint(ckpt, checkpoint, ema=report.get("weights") != "model")
    classifier = OnnxClassifier(onnx_path)
    tree, root = run_data(ckpt, classifier.mapping, data=data)
    images, labels = (None, None) if tree is None else sample_images(
        classifier, tree.val_samples, num_images, seed=int((ckpt.get("args") or {}).get("seed", 0)),
        label_table=tree.label_table,
    )  # fmt: skip
    if images is None or labels is None or len(images) == 0:
        raise DataError(
            f"no validation images to benchmark {run} on "
            f"({f'none in {root}' if root else 'the run names no readable data'}). Pass --data "
            "DIR, a tree with a val/ split or a label file."
        )
    thresholds = mapping_thresholds(classifier.mapping)
    rows = benchmark(
        model, onnx_path, images, labels, threads=threads, batch_size=batch_size,
        latency_runs=latency_runs, throughput_batches=throughput_batches, thresholds=thresholds,
    )  # fmt: skip
    result = {
        "machine": machine(threads),
        # What the score and agreement columns hold: the task's own measures.
        "metric": "accuracy" if thresholds is None else "mAP",
        "agreement": "top1_agreement" if thresholds is None else "label_agreement",
        "checkpoint": str(checkpoint),
        "n_images": len(images),
        "batch_size": batch_size,
        "latency_runs": latency_runs,
        "throughput_batches": throughput_batches,
        "rows": rows,
        "int8_vs_fp32": ratios(rows, "onnx-int8"),
        "path": str(run / BENCHMARK_JSON),
    }
    atomic_write_json(run / BENCHMARK_JSON, result)
    return result


def print_result(result: dict[str, Any], console: Console | None = None) -> None:
    """The table, the machine, and INT8 against fp32 with the targets."""
    console = console or Console()
    m = result["machine"]
    table = Table(title=f"{result['n_images']} val images, {m['threads']} threads")
    metric, agreement = result.get("metric", "accuracy"), result.get("agreement", "top1_agreement")
    header = {"accuracy": "val acc", "mAP": "val mAP"}[metric]
    agree = {"top1_agreement": "top-1 agree", "label_agreement": "label agree"}[agreement]
    for name in ("format", "size MB", "p50 ms", "p95 ms", f"img/s @{result['batch_size']}",
                 header, agree):  # fmt: skip
        table.add_column(name, justify="left" if name == "format" else "right", no_wrap=True)
    for r in result["rows"]:
        table.add_row(
            escape(r["format"] + (" (FAILED)" if r["failed"] else "")),
            f"{r['size_bytes'] / 1e6:.2f}",
            f"{r['latency_ms_p50']:.2f}",
            f"{r['latency_ms_p95']:.2f}",
            f"{r['throughput_ips']:.1f}",
            f"{r[metric]:.4f}",
            f"{r[agreement]:.4f}",
        )
    console.print(table)
    runtimes = dict.fromkeys(r["runtime"] for r in result["rows"])  # once each, in row order
    console.print(f"runtimes: {escape(', '.join(runtimes))}")
    load = m["load_average"]
    console.print(
        f"machine: {escape(m['cpu'])}, {m['cores']} cores, {m['threads']} threads per runtime"
        + (f", load average {load[0]:.2f}" if load else "")
        + "; rows timed one after the other, so compare ratios"
    )
    ratio = result["int8_vs_fp32"]
    if ratio:
        console.print(
            f"INT8 vs fp32 ONNX: {ratio['throughput']:.2f}x throughput (target >= "
            f"{INT8_THROUGHPUT_TARGET}x), {ratio['size']:.2f}x size (target <= "
            f"{INT8_SIZE_TARGET}x)"
        )
    console.print(f"written: {escape(result['path'])}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("tools/benchmark.py"),
        description="Time and score a run's exported formats and its PyTorch model on the CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="a run folder with model.onnx (and the formats tools/export.py "
                   "wrote beside it)")  # fmt: skip
    p.add_argument("--data", default=None, help="tree or label file to score on; default: the "
                   "run's data")  # fmt: skip
    p.add_argument("--num-images", type=int, default=256, help="validation images to score on")
    p.add_argument("--threads", type=int, default=None, help="threads per runtime; default: "
                   "torch's default on this machine")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32, help="batch of the throughput figure")
    p.add_argument("--runs", type=int, default=50, help="batch-1 calls timed for the latency")
    p.add_argument("--batches", type=int, default=10, help="batches timed for the throughput")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0: benchmarked, 2: bad input."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a = build_parser().parse_args(argv)
    try:
        result = run_benchmark(
            a.run,
            data=a.data,
            num_images=a.num_images,
            threads=a.threads,
            batch_size=a.batch_size,
            latency_runs=a.runs,
            throughput_batches=a.batches,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
