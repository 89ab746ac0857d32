"""The deployment formats beyond ``model.onnx``: fp16 and INT8 ONNX, OpenVINO IR; and a runner
for each in its own runtime.

Every format is converted from the verified fp32 ``model.onnx`` (``trainer.export``) and keeps
its interface: input ``input`` (float32 NCHW, normalised with the mapping's mean/std, any batch
size), output ``logits``. So the run's ``labels_mapping.json`` describes every format, and the
mapping also travels inside each file (ONNX ``metadata_props``, the IR's ``rt_info``).

| format | file (beside ``model.onnx``) | made by |
| --- | --- | --- |
| ``onnx`` | ``model.onnx`` | ``trainer.export.export_onnx`` |
| ``onnx-fp16`` | ``model.fp16.onnx`` | onnxruntime's float16 converter, float32 input and output |
| ``onnx-int8`` | ``model.int8.onnx`` | onnxruntime's static quantization: QDQ, per-channel weights |
| ``openvino`` | ``openvino/model.xml`` + ``.bin`` | ``openvino.convert_model``, fp32 weights |

Example:
    >>> to_int8("runs/a/model.onnx", "runs/a/model.int8.onnx", calibration=images)
    >>> run = open_runner("onnx-int8", "runs/a/model.int8.onnx")
    >>> logits = run(images[:4])
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import ConfigError
from trainer.io import atomic_write_bytes, temp_path
from trainer.onnx_mapping import INPUT_NAME, OUTPUT_NAME, SIDECAR_NAME

__all__ = [
    "FORMATS",
    "OPENVINO_INSTALL",
    "FormatError",
    "Runner",
    "failed_path",
    "format_path",
    "import_openvino",
    "keep",
    "model_size",
    "open_runner",
    "parse_formats",
    "staged",
    "to_fp16",
    "to_int8",
    "to_openvino",
]

FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "openvino")
OPENVINO_DIR = "openvino"
OPENVINO_INSTALL = 'pip install "imgtrainer[openvino]"  (or: pip install openvino)'
_SUFFIX = {"onnx": "", "onnx-fp16": ".fp16", "onnx-int8": ".int8"}

# A batch of float32 (N, 3, S, S) inputs -> (N, C) logits, in the format's own runtime.
Runner = Callable[[np.ndarray], np.ndarray]


class FormatError(ConfigError):
    """An export format that is unknown, or whose runtime is not installed."""


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """The formats of a comma list (``"onnx,onnx-int8"``), each once, in the order of
    :data:`FORMATS`; ``onnx`` is always among them, as the others are converted from it.

    Raises:
        FormatError: an unknown name (the message lists the known ones).
    """
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip().lower() for n in names if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise FormatError(
            f"unknown export format {', '.join(map(repr, unknown))}; --formats takes a comma "
            f"list of {', '.join(FORMATS)} (e.g. --formats onnx,onnx-int8)."
        )
    return [f for f in FORMATS if f == "onnx" or f in names]


def format_path(onnx_path: str | os.PathLike[str], fmt: str) -> Path:
    """Where ``fmt`` goes, for the fp32 model at ``onnx_path`` (``model.onnx`` ->
    ``model.int8.onnx``, ``openvino/model.xml``)."""
    onnx_path = Path(onnx_path)
    if fmt == "openvino":
        return onnx_path.parent / OPENVINO_DIR / f"{onnx_path.stem}.xml"
    return onnx_path.with_name(f"{onnx_path.stem}{_SUFFIX[fmt]}{onnx_path.suffix}")


def failed_path(path: str | os.PathLike[str], fmt: str) -> Path:
    """The name a model that failed its check is kept under: ``model.int8.FAILED.onnx``, the
    folder ``openvino.FAILED/``."""
    path = Path(path)
    if fmt == "openvino":
        return path.parent.with_name(f"{path.parent.name}.FAILED") / path.name
    return path.with_name(f"{path.stem}.FAILED{path.suffix}")


def to_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """``src`` with float16 weights and arithmetic; input and output stay float32, so the
    preprocessing and the labels mapping are the same as the fp32 model's (whose metadata,
    the mapping among it, the converter keeps)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    atomic_write_bytes(dst, fp16.SerializeToString())
    return Path(dst)


class _Calibration:
    """onnxruntime's ``CalibrationDataReader``: the images in batches, once."""

    def __init__(self, images: np.ndarray, batch_size: int = 16) -> None:
        self._batches = iter(
            [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch.astype(np.float32)}


def to_int8(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, calibration: np.ndarray
) -> Path:
    """Static post-training quantization of ``src``: QDQ format, int8 per-channel weights,
    uint8 activations whose ranges are calibrated (min/max) on ``calibration``.

    Args:
        src: the fp32 model.
        dst: the INT8 model to write.
        calibration: float32 ``(N, 3, S, S)`` images, preprocessed as the model expects
            (training images, as validation preprocesses them).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ValueError("INT8 calibration needs at least one image")
    with tempfile.TemporaryDirectory(prefix="int8-", dir=Path(dst).parent) as tmp:
        # Shape inference and graph optimisation first, as onnxruntime advises: the quantizer
        # then sees fused Conv+BatchNorm, and quantizes one Conv instead of two nodes.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(quantized),
            _Calibration(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        proto = onnx.load(str(quantized))  # the metadata, the mapping among it, kept
    atomic_write_bytes(dst, proto.SerializeToString())
    return Path(dst)


def import_openvino() -> Any:
    """The ``openvino`` module.

    Raises:
        FormatError: it is not installed (the message gives the pip command).
    """
    try:
        import openvino
    except ImportError as e:
        raise FormatError(
            f"the openvino format needs the openvino package, which is not installed ({e}). "
            f"Install it with: {OPENVINO_INSTALL}; or leave openvino out of --formats."
        ) from e
    return openvino


def to_openvino(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, mapping: dict[str, Any]
) -> Path:
    """``src`` as OpenVINO IR: ``dst`` (``.xml``) and its weights beside it (``.bin``), fp32,
    with the labels mapping in the IR's ``rt_info`` and as ``labels_mapping.json`` in the
    same folder, so the folder is all a deployer needs."""
    ov = import_openvino()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(src))
    model.set_rt_info(json.dumps(mapping, ensure_ascii=False), ["labels_mapping"])
    # fp32 weights: the default halves them, which costs the agreement fp32 formats promise.
    ov.save_model(model, str(dst), compress_to_fp16=False)
    (dst.parent / SIDECAR_NAME).write_text(json.dumps(mapping, indent=2, ensure_ascii=False))
    return dst


@contextlib.contextmanager
def staged(final: Path, fmt: str) -> Iterator[Path]:
    """A temporary path to write ``fmt`` to; the caller then calls :func:`keep`."""
    if fmt == "openvino":
        folder = temp_path(final.parent)
        folder.mkdir()  # the umask's mode, as the run's other folders (mkdtemp's is 0700)
        try:
            yield folder / final.name
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}-", suffix=".onnx", dir=final.parent)
        os.close(fd)
        try:
            yield Path(name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)


def keep(staged_path: Path, final: Path, fmt: str, *, passed: bool) -> Path:
    """Move a checked model into place: ``final`` when it ``passed`` (a stale failed one is
    removed), else its :func:`failed_path` (``final`` is left as it was). Returns where it went."""
    target = final if passed else failed_path(final, fmt)
    other = failed_path(final, fmt) if passed else None
    if fmt == "openvino":
        _replace_tree(staged_path.parent, target.parent)
        if other is not None:
            shutil.rmtree(other.parent, ignore_errors=True)
    else:
        os.replace(staged_path, target)
        if other is not None:
            with contextlib.suppress(FileNotFoundError):
                other.unlink()
    return target


def _replace_tree(src: Path, dst: Path) -> None:
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def model_size(path: str | os.PathLike[str], fmt: str) -> int:
    """Bytes on disk of the model: the ``.onnx`` file, or the IR's ``.xml`` and ``.bin``."""
    path = Path(path)
    if fmt == "openvino":
        return sum(p.stat().st_size for p in (path, path.with_suffix(".bin")))
    return path.stat().st_size


def open_runner(fmt: str, path: str | os.PathLike[str], *, threads: int | None = None) -> Runner:
    """A function running ``path`` in ``fmt``'s own runtime on the CPU: ONNX Runtime for the
    ONNX formats, OpenVINO for ``openvino``.

    Args:
        fmt: one of :data:`FORMATS`.
        path: the model file (``.onnx``, or the IR's ``.xml``).
        threads: intra-op threads; None: the runtime's default.
    """
    if fmt == "openvino":
        return _openvino_runner(Path(path), threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(inputs: np.ndarray) -> np.ndarray:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.astype(np.float32)})
        return np.asarray(logits)

    return run


def _openvino_runner(path: Path, threads: int | None) -> Runner:
    ov = import_openvino()
    # f32 arithmetic: on CPUs with bf16 units OpenVINO would otherwise pick bf16 by itself.
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    output = compiled.output(0)

    def run(inputs: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(inputs.astype(np.float32))[output])

    return run
