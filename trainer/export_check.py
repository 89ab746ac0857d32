"""Every export format checked on real images in its own runtime against the PyTorch model.

The images go through the model's own preprocessing (``OnnxClassifier.preprocess``: the
validation preprocessing its labels mapping describes), so the check sees what a deployer's
images become. Each format gets an entry of ``export_report.json``'s ``formats``: top-1
agreement with PyTorch, both accuracies, the largest logit difference (float formats), and
whether it meets its bar (:data:`BARS`). A multi-label model (its mapping's ``"task"``) is
held to the same bars in its own measures: the agreement of its per-label decisions at the
mapping's thresholds (:func:`label_agreement`), and val mAP (and micro F1) for accuracy; each
entry names the measures it holds (``"agreement"``, ``"metric"``). :func:`export_formats`
converts, checks and files each format: under its name when it passes, under a ``FAILED``
name when it does not.

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
from trainer.multilabel import label_results, summarize
from trainer.onnx_classifier import OnnxClassifier

log = logging.getLogger("trainer")

__all__ = [
    "BARS",
    "Bar",
    "check_logits",
    "export_formats",
    "label_agreement",
    "mapping_thresholds",
    "run_batches",
    "runtime_version",
    "sample_images",
    "task_scores",
    "torch_logits",
]


@dataclass(frozen=True)
class Bar:
    """What a format must meet against the PyTorch model on the check's images.

    Attributes:
        min_agreement: the smallest share of images with PyTorch's top-1 class (multi-label:
            of (image, class) decisions that are PyTorch's).
        atol: float formats as exact as fp32: the largest logit difference allowed is
            ``atol * max(1, max |PyTorch logit|)`` (``trainer.export.verify_onnx``'s rule);
            None: not checked.
        max_accuracy_drop: the most the accuracy (multi-label: mAP) may fall below
            PyTorch's (0.01: one point); None: not checked.
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
    classifier: OnnxClassifier,
    samples: SampleArray,
    n: int,
    *,
    seed: int = 0,
    label_table: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` of ``samples``, a seeded draw (all of them when fewer), preprocessed by
    ``classifier`` as its model expects; a file that cannot be decoded is left out with a
    warning.

    Args:
        classifier: preprocesses the files.
        samples: ``(path, target)`` pairs, e.g. ``data.val_samples``.
        n: the most images to draw.
        seed: seeds the draw.
        label_table: multi-label data's ``data.label_table``: the labels returned are then
            its multi-hot rows.

    Returns:
        float32 ``(N, 3, S, S)`` images and their int64 labels (multi-label: float32 multi-hot
        ``(N, C)``), in file order.
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
    targets = np.asarray(labels, np.int64)
    if label_table is not None:
        targets = label_table.numpy()[targets].astype(np.float32)
    return images.astype(np.float32, copy=False), targets


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


def label_agreement(logits: np.ndarray, reference: np.ndarray, thresholds: Sequence[float]) -> float:
    """The share of a multi-label model's (image, class) decisions ``sigmoid >= threshold``
    on which ``logits`` agree with ``reference``'s: its agreement with PyTorch, for every format
    (``trainer.export.verify_onnx`` too)."""
    cut, sig = np.asarray(thresholds), lambda z: 1 / (1 + np.exp(-z.astype(np.float64)))
    return float(((sig(logits) >= cut) == (sig(reference) >= cut)).mean())


def task_scores(
    logits: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] | None = None
) -> dict[str, float]:
    """A model's figures on images with ``labels``: ``{"accuracy"}`` (top-1, ``labels`` the
    class indices), or for a multi-label model (``thresholds`` given, ``labels`` multi-hot
    ``(N, C)``) the engine's own ``{"mAP", "micro_f1"}`` at the thresholds
    (``trainer.multilabel``; ``mAP`` NaN when no class has a positive image)."""
    if thresholds is None:
        return {"accuracy": float((logits.argmax(1) == labels).mean())}
    probs = torch.from_numpy(logits.astype(np.float64)).sigmoid()
    results = label_results(probs, torch.from_numpy(labels > 0.5), torch.tensor(thresholds))
    got = summarize(results, float(len(labels)), 0.0, "val")
    return {"mAP": got["val/mAP"], "micro_f1": got["val/micro_f1"]}


def check_logits(
    fmt: str,
    logits: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A format's logits against PyTorch's (``reference``) on images with ``labels``.

    Args:
        fmt: the format, whose bar (:data:`BARS`) applies.
        logits: the format's ``(N, C)`` logits.
        reference: PyTorch's.
        labels: the images' classes ``(N,)``, or a multi-label model's multi-hot ``(N, C)``.
        thresholds: a multi-label model's per-class thresholds: the agreement is then
            :func:`label_agreement`, and the figures are ``mAP`` and ``micro_f1``.

    Returns:
        ``{"agreement", "metric"}`` naming the measures the entry holds (``"top1_agreement"``
        and ``"accuracy"``; multi-label: ``"label_agreement"`` and ``"mAP"``), the agreement,
        each :func:`task_scores` figure for the format and for PyTorch (``torch_`` first:
        ``"torch_accuracy"``), ``"max_abs_diff"`` (float formats, else None),
        ``"tolerance"`` (when the bar has one), ``"n_images"``, ``"bar"``, ``"passed"`` and
        ``"failures"``, which says in words which part of the bar was missed.
    """
    bar = BARS[fmt]
    if thresholds is None:
        measure, metric = "top1_agreement", "accuracy"
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    else:
        measure, metric = "label_agreement", "mAP"
        agreement = label_agreement(logits, reference, thresholds)
    scores = task_scores(logits, labels, thresholds)
    torch_scores = {f"torch_{k}": v for k, v in task_scores(reference, labels, thresholds).items()}
    score, torch_score = scores[metric], torch_scores[f"torch_{metric}"]
    diff = float(np.abs(logits - reference).max()) if fmt in FLOAT_FORMATS else None
    failures = []
    if agreement < bar.min_agreement:
        said = "top-1 agreement" if thresholds is None else "label agreement"
        failures.append(f"{said} {agreement:.4f} < {bar.min_agreement}")
    tolerance = None
    if bar.atol is not None and diff is not None:
        tolerance = bar.atol * max(1.0, float(np.abs(reference).max()))
        if diff > tolerance:
            failures.append(f"max |logit diff| {diff:.3g} > {tolerance:.3g}")
    # Rounded: 1.0 - 0.99 is 0.010000000000000009 in floating point, one point and a hair.
    drop = round(torch_score - score, 9)
    if bar.max_accuracy_drop is not None and drop > bar.max_accuracy_drop:
        failures.append(
            f"{metric} {score:.4f} is more than {bar.max_accuracy_drop * 100:g} point below "
            f"PyTorch's {torch_score:.4f}"
        )
    return {
        "agreement": measure,
        "metric": metric,
        measure: agreement,
        **scores,
        **torch_scores,
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
        labels: their classes (multi-label: multi-hot rows, see :func:`sample_images`).
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
    thresholds = mapping_thresholds(mapping)
    reference = torch_logits(model, images)
    entries: dict[str, dict[str, Any]] = {}
    for fmt in formats:
        final = ef.format_path(onnx_path, fmt)
        if fmt == "onnx":
            entries[fmt] = _entry(fmt, final, reference, images, labels, thresholds)
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
            entry = _entry(fmt, tmp, reference, images, labels, thresholds)
            entry["path"] = str(ef.keep(tmp, final, fmt, passed=entry["passed"]))
        entries[fmt] = entry
    return entries


def mapping_thresholds(mapping: Mapping[str, Any]) -> list[float] | None:
    """A multi-label mapping's per-class thresholds (0.5 where it has none); None for a
    single-label one."""
    if mapping.get("task") != "multilabel":
        return None
    return list(mapping.get("thresholds") or [0.5] * len(mapping["idx_to_class"]))


def _entry(
    fmt: str,
    path: Path,
    reference: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float] | None,
) -> dict[str, Any]:
    logits = run_batches(ef.open_runner(fmt, path), images)
    return {
        "format": fmt,
        "path": str(path),
        "size_bytes": ef.model_size(path, fmt),
        "runtime": runtime_version(fmt),
        **check_logits(fmt, logits, reference, labels, thresholds),
    }
