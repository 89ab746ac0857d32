"""The deployment benchmark: each exported format, and the PyTorch eager model, timed on this
machine's CPU in its own runtime and scored on validation images.

A row per model: file size, latency p50/p95 at batch 1, throughput at a batch of 32, validation
accuracy and top-1 agreement with PyTorch (a multi-label model's: val mAP and micro F1 at its
thresholds, and per-label agreement; ``trainer.export_check.check_logits``). Every runtime gets the same number of threads, and
the rows are timed one after the other in one process, so their ratios compare; absolute
figures move with whatever else the machine runs (:func:`machine` records its load).

Example:
    >>> rows = benchmark(model, "runs/a/model.onnx", images, labels, threads=4)
    >>> [(r["format"], r["throughput_ips"]) for r in rows]
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import platform
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer import export_formats as ef
from trainer.export_check import check_logits, run_batches, runtime_version, task_scores

__all__ = ["benchmark", "machine", "ratios", "time_runner", "torch_runner"]


def machine(threads: int) -> dict[str, Any]:
    """The CPU, its core count, the threads each runtime gets and the load averages."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "load_average": load,
        "torch": torch.__version__,
    }


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_runner(model: nn.Module) -> ef.Runner:
    """A CPU float32 eval copy of ``model`` as a runner: the PyTorch eager row."""
    ref = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()

    def run(inputs: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return ref(torch.from_numpy(np.ascontiguousarray(inputs))).numpy()

    return run


def time_runner(
    run: ef.Runner,
    images: np.ndarray,
    *,
    batch_size: int = 32,
    latency_runs: int = 50,
    throughput_batches: int = 10,
    warmup: int = 3,
) -> dict[str, float]:
    """Latency at batch 1 (p50 and p95 over ``latency_runs`` images, in ms) and throughput at
    ``batch_size`` (images per second over ``throughput_batches`` batches), after ``warmup``
    untimed calls of each size."""
    singles = [images[i % len(images)][None] for i in range(warmup + latency_runs)]
    batch = np.resize(images, (batch_size, *images.shape[1:])).astype(np.float32)  # repeats
    times = []
    for i, x in enumerate(singles):
        start = time.perf_counter()
        run(x)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    for _ in range(warmup):
        run(batch)
    start = time.perf_counter()
    for _ in range(throughput_batches):
        run(batch)
    elapsed = time.perf_counter() - start
    return {
        "latency_ms_p50": float(np.percentile(times, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(times, 95) * 1e3),
        "throughput_ips": batch_size * throughput_batches / elapsed,
    }


def _state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def benchmark(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    threads: int,
    batch_size: int = 32,
    latency_runs: int = 50,
    throughput_batches: int = 10,
    thresholds: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """A row for the PyTorch model and for each format found beside ``onnx_path`` (under its
    name, or its ``FAILED`` one, which the row's ``failed`` flags).

    Args:
        model: the PyTorch model the formats were exported from.
        onnx_path: the fp32 ``model.onnx``; the other formats are looked for beside it.
        images: float32 preprocessed validation images to score and time on.
        labels: their classes (multi-label: multi-hot rows).
        threads: intra-op threads for every runtime.
        batch_size: the batch of the throughput figure.
        latency_runs: batch-1 calls timed for the latency percentiles.
        throughput_batches: batches timed for the throughput.
        thresholds: a multi-label model's per-class thresholds.

    Returns:
        Rows of ``format``, ``path``, ``runtime``, ``size_bytes``, ``latency_ms_p50``,
        ``latency_ms_p95``, ``throughput_ips``, the scores (``accuracy``; multi-label ``mAP``
        and ``micro_f1``), the agreement with PyTorch (``top1_agreement``; multi-label
        ``label_agreement``), ``max_abs_diff`` (float formats), ``failed``.
    """
    timing = {
        "batch_size": batch_size,
        "latency_runs": latency_runs,
        "throughput_batches": throughput_batches,
    }
    with _torch_threads(threads):
        reference_run = torch_runner(model)
        reference = run_batches(reference_run, images, batch_size)
        agreement = "top1_agreement" if thresholds is None else "label_agreement"
        rows = [
            {
                "format": "pytorch",
                "path": None,
                "runtime": f"torch {torch.__version__} (eager)",
                "size_bytes": _state_dict_bytes(model),
                **time_runner(reference_run, images, **timing),
                **task_scores(reference, labels, thresholds),
                agreement: 1.0,
                "max_abs_diff": 0.0,
                "failed": False,
            }
        ]
        for fmt in ef.FORMATS:
            path = ef.format_path(onnx_path, fmt)
            failed = not path.is_file() and ef.failed_path(path, fmt).is_file()
            if failed:
                path = ef.failed_path(path, fmt)
            elif not path.is_file():
                continue
            run = ef.open_runner(fmt, path, threads=threads)
            logits = run_batches(run, images, batch_size)
            check = check_logits(fmt, logits, reference, labels, thresholds)
            rows.append(
                {
                    "format": fmt,
                    "path": str(path),
                    "runtime": runtime_version(fmt),
                    "size_bytes": ef.model_size(path, fmt),
                    **time_runner(run, images, **timing),
                    **task_scores(logits, labels, thresholds),
                    agreement: check[agreement],
                    "max_abs_diff": check["max_abs_diff"],
                    "failed": failed,
                }
            )
    return rows


def ratios(rows: list[dict[str, Any]], fmt: str, base: str = "onnx") -> dict[str, float] | None:
    """``fmt``'s throughput and size relative to ``base``'s; None when either row is missing."""
    by = {r["format"]: r for r in rows}
    if fmt not in by or base not in by:
        return None
    return {
        "throughput": by[fmt]["throughput_ips"] / by[base]["throughput_ips"],
        "size": by[fmt]["size_bytes"] / by[base]["size_bytes"],
        "latency_p50": by[fmt]["latency_ms_p50"] / by[base]["latency_ms_p50"],
    }
