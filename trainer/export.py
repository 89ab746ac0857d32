"""ONNX export with the labels mapping embedded, and an onnxruntime check against PyTorch.

The exported file is all ``tools/predict.py`` needs: the graph takes ``input`` (float NCHW,
normalised with the mapping's mean/std, any batch size) and returns ``logits``; the labels
mapping travels in the model's ``metadata_props``. Reading it back and checking it against the
graph lives in ``trainer.onnx_mapping``, re-exported here; the check runs the exported file
through ``OnnxClassifier``, the one ONNX loader.

All ONNX export lives here: ``hooks.OnnxExportHook`` (at the end of a fit) and
``tools/export.py`` (from a checkpoint) both call :func:`export_with_report`, with images from
:func:`first_images` or :func:`random_images`.

Example:
    >>> report = export_and_verify(model, "runs/demo/model.onnx",
    ...                            labels_mapping=data.labels_mapping, images=val_batch)
    >>> report["top1_agreement"], report["max_abs_diff"]
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.errors import ConfigError
from trainer.export_check import label_agreement, mapping_thresholds
from trainer.io import atomic_write_bytes, atomic_write_json, replace_durably, temp_path
from trainer.onnx_classifier import OnnxClassifier
from trainer.onnx_mapping import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIDECAR_NAME,
    OnnxModelError,
    check_num_outputs,
    check_onnx_signature,
    read_onnx_metadata,
    split_entry,
    validate_labels_mapping,
)
from trainer.restore import normalize

__all__ = [
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "SIDECAR_NAME",
    "ExportVerificationError",
    "OnnxClassifier",
    "OnnxModelError",
    "agreement_text",
    "check_num_outputs",
    "check_onnx_signature",
    "export_and_verify",
    "export_onnx",
    "export_with_report",
    "first_images",
    "random_images",
    "read_onnx_metadata",
    "split_entry",
    "validate_labels_mapping",
    "verify_onnx",
]

# Opset 17 is the oldest with LayerNormalization; older runtimes are not worth supporting.
MIN_OPSET = 17
# Protobuf cannot serialise a message over 2 GiB; past this, weights go to a side file.
_SINGLE_FILE_LIMIT = 1_800_000_000
# The exporter's own loggers: at INFO they report each optimisation pass ("Removed 38 unused
# nodes", a dozen lines per export), which a tool's INFO logging would print.
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


class ExportVerificationError(RuntimeError):
    """The exported ONNX model disagrees with the PyTorch model beyond the tolerance."""


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    labels_mapping: Mapping[str, Any],
    opset: int = 18,
    model_name: str = "",
    data_name: str | None = None,
) -> Path:
    """Export ``model`` to a single self-contained ONNX file with a dynamic batch axis.

    The caller's model is left untouched: a CPU float32 copy in eval mode is exported.
    The file is written atomically, so a crash never leaves a half-written ``model.onnx``.

    Args:
        model: Classifier taking normalised float NCHW input and returning (B, C) logits.
        path: Destination ``.onnx`` file; parent folders are created.
        labels_mapping: The run's labels mapping (``class_to_idx``, ``idx_to_class``,
            ``image_size``, ``normalization``, ...); stored in the model's metadata.
        opset: ONNX opset version, at least 17.
        model_name: Architecture name recorded in the metadata (e.g. ``"resnet18"``).
        data_name: for a model over 2 GB, the file its weights go to, beside ``path``;
            default ``<path name>.data``.

    Returns:
        The path written.

    Raises:
        ValueError: ``opset`` is below 17, the mapping lacks ``image_size``/``idx_to_class``,
            or its ``num_classes`` is not the number of classes in ``idx_to_class``.
        ConfigError: torch could not produce the requested opset (it implements >= 18 and
            down-converts, which fails for some ops, e.g. ReduceMean from BatchNorm/pooling).
    """
    import onnx  # deferred: onnx is only needed by export, not by training

    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}; use opset=18.")
    for key in ("image_size", "idx_to_class"):
        if key not in labels_mapping:
            raise ValueError(
                f"labels_mapping lacks {key!r} (has {sorted(labels_mapping)}); pass the mapping "
                "written to labels_mapping.json by the data module."
            )
    n = labels_mapping.get("num_classes", len(labels_mapping["idx_to_class"]))
    if n != len(labels_mapping["idx_to_class"]):
        raise ValueError(
            f"labels_mapping says num_classes {n} but names {len(labels_mapping['idx_to_class'])} "
            "classes in idx_to_class; pass the mapping written to labels_mapping.json."
        )
    path = Path(path)
    size = int(labels_mapping["image_size"])
    export_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    # A batch of 2, not 1: torch.export specialises size-1 dims, which would pin the batch.
    example = torch.randn(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        program = torch.onnx.export(
            export_model,
            (example,),
            None,  # no file: torch would default to writing weights to a separate .data file
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: batch},),
            verbose=False,  # otherwise torch prints a progress line per export stage to stdout
        )
    assert program is not None  # dynamo=True always returns an ONNXProgram
    proto = program.model_proto
    got = _default_opset(proto)
    if got != opset:
        # torch implements opset >= 18 and down-converts; when that fails it keeps 18 and only
        # logs it, which would hand an opset-17 runtime a file it cannot load.
        raise ConfigError(
            f"torch.onnx could not export this model at opset {opset} (it produced opset {got}; "
            f"the onnx version converter failed). Use opset={got} or newer, or export a model "
            "whose ops convert."
        )
    onnx.helper.set_model_props(proto, _metadata_props(labels_mapping, model_name))
    onnx.checker.check_model(proto, full_check=True)
    _save_proto(proto, path, data_name)
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's progress chatter off the terminal; its warnings and errors stay.

    Its loggers are raised to WARNING, and what it prints to stdout is held back and replayed
    on stderr only when the export fails, where it may explain the failure.
    """
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    held = io.StringIO()
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        with contextlib.redirect_stdout(held):
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _default_opset(proto: Any) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _metadata_props(labels_mapping: Mapping[str, Any], model_name: str) -> dict[str, str]:
    idx_to_class = {str(k): v for k, v in labels_mapping["idx_to_class"].items()}
    class_names = [idx_to_class[str(i)] for i in range(len(idx_to_class))]
    mapping = {**labels_mapping, "num_classes": len(class_names)}  # older mappings lack it
    return {
        "labels_mapping": json.dumps(mapping, ensure_ascii=False),
        "class_names": json.dumps(class_names, ensure_ascii=False),
        "num_classes": str(len(class_names)),
        "image_size": str(int(labels_mapping["image_size"])),
        "normalization": json.dumps(labels_mapping.get("normalization", {})),
        "model_name": model_name,
    }


def _save_proto(proto: Any, path: Path, data_name: str | None = None) -> None:
    import onnx

    data_name = data_name or f"{path.name}.data"

    if proto.ByteSize() < _SINGLE_FILE_LIMIT:
        atomic_write_bytes(path, proto.SerializeToString())
        return
    # Too big for one protobuf: weights go to ``data_name`` beside the file. The .data file is
    # written in place; the .onnx that points to it is still replaced atomically last.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        onnx.save_model(
            proto,
            tmp,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            # Small constants (axes, shapes) stay inline: onnxruntime's shape inference reads them.
            size_threshold=1024,
            location=data_name,
        )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> np.ndarray:
    ref = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    with torch.inference_mode():
        out = [ref(chunk.float()) for chunk in images.cpu().split(batch_size)]
    return torch.cat(out).numpy()


def _onnx_logits(onnx_path: Path, images: torch.Tensor, batch_size: int) -> np.ndarray:
    model = OnnxClassifier(onnx_path)
    chunks = images.detach().cpu().float().numpy()
    return np.concatenate(
        [model.logits(chunks[i : i + batch_size]) for i in range(0, len(chunks), batch_size)]
    )


def verify_onnx(
    onnx_path: str | os.PathLike[str],
    model: nn.Module,
    images: torch.Tensor,
    *,
    atol: float = 1e-3,
    min_agreement: float = 0.995,
    batch_size: int = 32,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Compare onnxruntime (CPU) logits with PyTorch's on the same normalised images.

    Tolerance: float32 rounding grows with the size of the logits, so the allowed error is
    ``atol * max(1, max |torch logit|)``: an absolute ``atol`` for logits within +-1, relative
    to the largest logit beyond that. ``max_abs_diff`` is the raw largest difference.

    Args:
        onnx_path: The exported model.
        model: The PyTorch model it came from (not modified; a CPU float32 copy is run).
        images: Float (N, 3, H, W) images already normalised with the mapping's mean/std.
        atol: Tolerance on logits as described above.
        min_agreement: Smallest acceptable fraction of images with the same top-1 class.
        batch_size: Images per forward pass on each side.
        thresholds: multi-label models: the agreement that must reach ``min_agreement`` is
            ``label_agreement``, the share of (image, class) decisions ``sigmoid >= threshold``
            that agree.

    Returns:
        ``{"top1_agreement", "max_abs_diff", "tolerance", "n_images", "atol", "min_agreement",
        "passed", "onnxruntime_version", "opset"}``.
    """
    import onnx
    import onnxruntime as ort

    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty (N, 3, H, W) tensor, got {tuple(images.shape)}"
        )
    onnx_path = Path(onnx_path)
    expected = _torch_logits(model, images, batch_size)
    actual = _onnx_logits(onnx_path, images, batch_size)
    max_abs_diff = float(np.abs(actual - expected).max())
    tolerance = atol * max(1.0, float(np.abs(expected).max()))
    agreement = float((actual.argmax(1) == expected.argmax(1)).mean())
    labels = {}
    if thresholds is not None:  # multi-label: per-label decisions at the thresholds
        labels["label_agreement"] = label_agreement(actual, expected, thresholds)
    opset = _default_opset(onnx.load(onnx_path, load_external_data=False))
    return {
        "top1_agreement": agreement,
        "max_abs_diff": max_abs_diff,
        "tolerance": tolerance,
        "n_images": len(images),
        "atol": atol,
        "min_agreement": min_agreement,
        **labels,
        "passed": labels.get("label_agreement", agreement) >= min_agreement
        and max_abs_diff <= tolerance,
        "onnxruntime_version": ort.__version__,
        "opset": opset,
    }


def export_and_verify(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    labels_mapping: Mapping[str, Any],
    images: torch.Tensor,
    report_path: str | os.PathLike[str] | None = None,
    opset: int = 18,
    model_name: str = "",
    atol: float = 1e-3,
    min_agreement: float = 0.995,
) -> dict[str, Any]:
    """Export ``model``, check it with onnxruntime, and write the report JSON.

    The model is exported to a temp file beside ``path`` and checked there; only a model that
    passes replaces ``path``, so a failed check never costs the previous good ``model.onnx``.

    Args:
        model: The classifier to export (not modified).
        path: Destination ``.onnx`` file.
        labels_mapping: Stored in the model's metadata (see :func:`export_onnx`).
        images: Normalised float (N, 3, H, W) images to compare on, e.g. a validation batch.
        report_path: Where the report goes; defaults to ``<path stem>.verify.json`` beside it.
        opset: ONNX opset version.
        model_name: Architecture name recorded in the metadata.
        atol: Logit tolerance (see :func:`verify_onnx`).
        min_agreement: Smallest acceptable top-1 agreement.

    Returns:
        The report of :func:`verify_onnx` plus ``"path"``.

    Raises:
        ExportVerificationError: The check failed; the report has been written first, and
            ``path`` is as it was.
    """
    path = Path(path)
    tmp, passed = temp_path(path), False
    # A model over 2 GB keeps its weights in a file of its own name, so the previous model's
    # weights stay whole until the new model is in place.
    data_name = f"{path.name}.{tmp.name.split('.')[-2]}.data"
    try:
        export_onnx(
            model,
            tmp,
            labels_mapping=labels_mapping,
            opset=opset,
            model_name=model_name,
            data_name=data_name,
        )
        report = verify_onnx(tmp, model, images, atol=atol, min_agreement=min_agreement,
                             thresholds=mapping_thresholds(labels_mapping))  # fmt: skip
        report["path"] = str(path)
        report_path = Path(report_path) if report_path else path.with_suffix(".verify.json")
        atomic_write_json(report_path, report)
        passed = bool(report["passed"])
        if passed:
            replace_durably(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # what is left of a failed export
        _remove_data_files(path, keep=data_name if passed else None, failed=data_name)
    if not passed:
        kept = f"{path} is as it was" if path.exists() else f"{path} was not written"
        raise ExportVerificationError(
            f"ONNX export to {path} does not match the PyTorch model on {report['n_images']} "
            f"images: {agreement_text(report)} (need >= {min_agreement}), "
            f"max |logit diff| {report['max_abs_diff']:.3g} (allowed {report['tolerance']:.3g}); "
            f"{kept}. Report: {report_path}. Ops that export differently (custom ops, "
            "train-mode layers) are the usual cause; export with opset 18 and check the model "
            "is deterministic."
        )
    return report


def agreement_text(report: Mapping[str, Any]) -> str:
    """``top-1 agreement 0.9961``, or a multi-label model's ``label agreement 0.9961``."""
    if "label_agreement" in report:
        return f"label agreement {report['label_agreement']:.4f}"
    return f"top-1 agreement {report['top1_agreement']:.4f}"


def _remove_data_files(path: Path, keep: str | None, failed: str) -> None:
    """Remove the external-data files (models over 2 GB) that ``path`` no longer points to.

    After a passed export (``keep`` is its data file name) that is every other one; after a
    failed one (``keep`` None) only its own, ``failed``.
    """
    if keep is None:
        with contextlib.suppress(OSError):
            (path.parent / failed).unlink()
        return
    ours = re.compile(re.escape(path.name) + r"(\.[0-9a-f]{8})?\.data")
    for p in path.parent.glob(f"{path.name}*.data"):
        if ours.fullmatch(p.name) and p.name != keep:
            with contextlib.suppress(OSError):
                p.unlink()


def export_with_report(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    labels_mapping: Mapping[str, Any],
    images: torch.Tensor,
    report_path: str | os.PathLike[str],
    opset: int = 18,
    model_name: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`export_and_verify`, with ``extra`` fields added to the report file.

    The fields are added whether the check passes or fails, so a failed report still says
    what was compared.

    Raises:
        ExportVerificationError: the check failed; the report is on disk.
    """
    report_path = Path(report_path)
    try:
        report = export_and_verify(
            model,
            path,
            labels_mapping=labels_mapping,
            images=images,
            report_path=report_path,
            opset=opset,
            model_name=model_name,
        )
    except ExportVerificationError:
        if extra and report_path.is_file():
            failed = json.loads(report_path.read_text(encoding="utf-8"))
            atomic_write_json(report_path, {**failed, **extra})
        raise
    if extra:
        report = {**report, **extra}
        atomic_write_json(report_path, report)
    return report


def first_images(
    loader: Iterable[Any] | None, n: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor | None:
    """Up to ``n`` images from ``loader``, normalised as the engine does (the images to verify
    an export on); None if it has none."""
    if loader is None:
        return None
    chunks: list[torch.Tensor] = []
    have = 0
    for batch in loader:
        x = batch[0][: n - have]
        chunks.append(normalize(x.cpu(), mean, std))
        have += len(x)
        if have >= n:
            break
    return torch.cat(chunks) if chunks else None


def random_images(image_size: int, n: int) -> torch.Tensor:
    """``n`` standard-normal images: what normalised images look like to the model, roughly;
    seeded, so every export of a model is checked on the same ones."""
    return torch.randn(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
