"""Every export format checked on real images in its own runtime against the PyTorch model.

The images go through the model's own preprocessing (``OnnxClassifier.preprocess``: the
validation preprocessing its labels mapping describes), so the check sees what a deployer's
images become. Each format gets an entry of ``export_report.json``'s ``formats``: top-1
agreement with PyTorch, both accuracies, the largest logit difference (float formats), and
whether it meets its bar (:data:`BARS`). :func:`export_formats` converts, checks and files
each format: under its name when it passes, under a ``FAILED`` name when it does not.

Example:
    >>> clf = OnnxClassifier("runs/a/model.onnx")
    >>> images, labels = sample_images(clf, data.val_samples, 256, seed=0)
    >>> calib, _ = sample_images(clf, data.train_samples, 256, seed=0)
    >>> entries = export_formats("runs/a/model.onnx", model, ["onnx", "onnx-int8"],
    ...                          images=images, labels=labels, calibration=calib)
    >>> entries["onnx-int8"]["top1_agreement"], entries["onnx-int8"]["passed"]
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer import export_formats as ef
from trainer.data.samples import SampleArray
from trainer.errors import DataError
from trainer.onnx_classifier import OnnxClassifier

log = logging.getLogger("trainer")

__all__ = [
    "BARS",
    "Bar",
    "check_logits",
    "export_formats",
    "run_batches",
    "runtime_version",
    "sample_images",
    "torch_logits",
]


@dataclass(frozen=True)
class Bar:
    """What a format must meet against the PyTorch model on the check's images.

    Attributes:
        min_agreement: the smallest share of images with PyTorch's top-1 class.
        atol: float formats as exact as fp32: the largest logit difference allowed is
            ``atol * max(1, max |PyTorch logit|)`` (``trainer.export.verify_onnx``'s rule);
            None: not checked.
        max_accuracy_drop: the most the accuracy may fall below PyTorch's (0.01: one
            point); None: not checked.
    """

    min_agreement: float
    atol: float | None = None
    max_accuracy_drop: float | None = None


BARS: dict[str, Bar] = {
    "onnx": Bar(0.995, atol=1e-3),
    "onnx-fp16": Bar(0.995),
    "onnx-int8": Bar(0.98, max_accuracy_drop=0.01),
    "openvino": Bar(0.995, atol=1e-3),
}
FLOAT_FORMATS = frozenset({"onnx", "onnx-fp16", "openvino"})


def sample_images(
    classifier: OnnxClassifier, samples: SampleArray, n: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` of ``samples``, a seeded draw (all of them when fewer), preprocessed by
    ``classifier`` as its model expects; a file that cannot be decoded is left out with a
    warning.

    Returns:
        float32 ``(N, 3, S, S)`` images and their int64 labels, in file order.
    """
    chosen = np.arange(len(samples))
    if n < len(samples):
        chosen = np.sort(np.random.default_rng(seed).choice(len(samples), n, replace=False))
    rows: list[np.ndarray] = []
    labels: list[int] = []
    for i in chosen.tolist():
        path, label = samples[i]
        try:
            rows.append(classifier.preprocess(path))
        except DataError as e:
            log.warning("skipped %s", e)
            continue
        labels.append(label)
    size = classifier.image_size
    images = np.stack(rows) if rows else np.zeros((0, 3, size, size), np.float32)
    return images.astype(np.float32, copy=False), np.asarray(labels, np.int64)


def torch_logits(model: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The logits of a CPU float32 copy of ``model`` (in eval mode) on ``images``."""
    ref = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    with torch.inference_mode():
        return np.concatenate(
            [
                ref(torch.from_numpy(images[i : i + batch_size])).numpy()
                for i in range(0, len(images), batch_size)
            ]
        )


def run_batches(run: ef.Runner, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``run`` over ``images`` in batches; the logits of all of them."""
    return np.concatenate(
        [run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )


def check_logits(
    fmt: str, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """A format's logits against PyTorch's (``reference``) on images with ``labels``.

    Returns:
        ``{"top1_agreement", "accuracy", "torch_accuracy", "max_abs_diff" (float formats,
        else None), "tolerance" (when the bar has one), "n_images", "bar", "passed",
        "failures"}``; ``failures`` says in words which part of the bar was missed.
    """
    bar = BARS[fmt]
    pred, ref = logits.argmax(1), reference.argmax(1)
    agreement = float((pred == ref).mean())
    accuracy = float((pred == labels).mean())
    torch_accuracy = float((ref == labels).mean())
    diff = float(np.abs(logits - reference).max()) if fmt in FLOAT_FORMATS else None
    failures = []
    if agreement < bar.min_agreement:
        failures.append(f"top-1 agreement {agreement:.4f} < {bar.min_agreement}")
    tolerance = None
    if bar.atol is not None and diff is not None:
        tolerance = bar.atol * max(1.0, float(np.abs(reference).max()))
        if diff > tolerance:
            failures.append(f"max |logit diff| {diff:.3g} > {tolerance:.3g}")
    # Rounded: 1.0 - 0.99 is 0.010000000000000009 in floating point, one point and a hair.
    drop = round(torch_accuracy - accuracy, 9)
    if bar.max_accuracy_drop is not None and drop > bar.max_accuracy_drop:
        failures.append(
            f"accuracy {accuracy:.4f} is more than {bar.max_accuracy_drop * 100:g} point below "
            f"PyTorch's {torch_accuracy:.4f}"
        )
    return {
        "top1_agreement": agreement,
        "accuracy": accuracy,
        "torch_accuracy": torch_accuracy,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "n_images": len(labels),
        "bar": asdict(bar),
        "passed": not failures,
        "failures": failures,
    }


def runtime_version(fmt: str) -> str:
    """The runtime that runs ``fmt`` and its version, e.g. ``"onnxruntime 1.18.0"``."""
    if fmt == "openvino":
        return f"openvino {ef.import_openvino().get_version()}"
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__}"


def export_formats(
    onnx_path: str | os.PathLike[str],
    model: nn.Module,
    formats: Sequence[str],
    *,
    images: np.ndarray,
    labels: np.ndarray,
    calibration: np.ndarray | None = None,
    mapping: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Convert the verified fp32 ``onnx_path`` to each of ``formats`` and check each one.

    ``onnx`` is checked where it is; each other format is written to a temporary name,
    checked, and then moved to its name (``trainer.export_formats.format_path``) when it meets
    its bar, else to its ``FAILED`` name, leaving a model already under its name as it was.

    Args:
        onnx_path: the fp32 model, exported and verified by ``trainer.export``.
        model: the PyTorch model it was exported from (not modified).
        formats: names from ``trainer.export_formats.FORMATS``.
        images: float32 images preprocessed for the model (:func:`sample_images`), to check on.
        labels: their classes.
        calibration: the INT8 calibration images (required for ``onnx-int8``).
        mapping: the labels mapping (default: the one in ``onnx_path``), stored with the IR.

    Returns:
        One entry per format: :func:`check_logits`' fields plus ``"format"``, ``"path"``
        (where it went), ``"size_bytes"`` and ``"runtime"``.

    Raises:
        DataError: no images to check on, or none to calibrate ``onnx-int8`` with.
    """
    onnx_path = Path(onnx_path)
    if len(images) == 0:
        raise DataError(
            f"no validation images to check the exports of {onnx_path} on; pass --data with "
            "a tree (or label file) that has validation images."
        )
    if "onnx-int8" in formats and (calibration is None or len(calibration) == 0):
        raise DataError(
            f"no training images to calibrate the INT8 export of {onnx_path} with; pass --data "
            "with a tree (or label file) that has training images."
        )
    if mapping is None:
        mapping = OnnxClassifier(onnx_path).mapping
    reference = torch_logits(model, images)
    entries: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        final = ef.format_path(onnx_path, fmt)
        if fmt == "onnx":
            entries[fmt] = _entry(fmt, final, reference, images, labels)
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        with ef.staged(final, fmt) as tmp:
            if fmt == "onnx-fp16":
                ef.to_fp16(onnx_path, tmp)
            elif fmt == "onnx-int8":
                assert calibration is not None  # checked above
                ef.to_int8(onnx_path, tmp, calibration=calibration)
            else:
                ef.to_openvino(onnx_path, tmp, mapping=dict(mapping))
            entry = _entry(fmt, tmp, reference, images, labels)
            entry["path"] = str(ef.keep(tmp, final, fmt, passed=entry["passed"]))
        entries[fmt] = entry
    return entries


def _entry(
    fmt: str, path: Path, reference: np.ndarray, images: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    logits = run_batches(ef.open_runner(fmt, path), images)
    return {
        "format": fmt,
        "path": str(path),
        "size_bytes": ef.model_size(path, fmt),
        "runtime": runtime_version(fmt),
        **check_logits(fmt, logits, reference, labels),
    }
