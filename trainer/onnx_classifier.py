"""OnnxClassifier: an exported ``model.onnx`` that classifies images with ONNX Runtime alone.

The labels mapping (class names, image size, crop_pct and resize mode, mean/std) comes from the
model's metadata, or from the ``labels_mapping.json`` beside it; images go through exactly the
validation preprocessing (``trainer.data.eval_preprocess`` with the mapping's
``EvalResize.from_mapping``, then ``(x / 255 - mean) / std``). ``tta="flip"`` averages each
image's probabilities with its mirror's. Files are decoded with
Pillow (``trainer.data.load_preprocessed``: large JPEGs at reduced size, as validation), which
raises on a malformed file where torchvision's native decoders have crashed the process;
``predict_batch`` skips such a file with a warning naming it.

It is the one ONNX loader: ``tools/predict.py``, ``tools/evaluate.py`` and the export check
(``trainer.export.verify_onnx``) all run models through it.

Example:
    >>> from trainer import OnnxClassifier
    >>> clf = OnnxClassifier("runs/demo/model.onnx")
    >>> clf.predict("photo.jpg", top_k=2)
    [('circle', 0.93), ('square', 0.04)]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainer.data import eval_preprocess, image_to_tensor, load_preprocessed
from trainer.data.transforms import EvalResize, check_tta
from trainer.errors import DataError
from trainer.onnx_mapping import (
    INPUT_NAME,
    OUTPUT_NAME,
    OnnxModelError,
    check_num_outputs,
    check_onnx_signature,
    classes_of,
    read_onnx_metadata,
)

log = logging.getLogger("trainer")

# A path, a PIL image, or a numpy uint8 array (H, W) or (H, W, C).
ImageInput = str | os.PathLike[str] | np.ndarray | Image.Image
_CHECKPOINT_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin", ".safetensors"})


class OnnxClassifier:
    """Classify images with an ONNX model exported by this trainer, preprocessing as validation.

    Args:
        path: the ``model.onnx`` of a run folder, or one written by ``tools/export.py``.
        providers: ONNX Runtime execution providers; default the CPU one.
        tta: "flip" averages the probabilities of each image and its horizontal mirror (one
            call, twice the rows); "none" (the default) runs the image alone.

    Attributes:
        path: the model file.
        mapping: its labels mapping, validated (``num_classes`` filled in for older files).
        classes: class names, by output index.
        image_size: the side of the square images the model takes.
        resize: how images are resized to it (the mapping's ``crop_pct`` and ``resize_mode``).
        multilabel: the mapping's ``"task"`` is "multilabel": probabilities are sigmoids and
            ``predict`` lists the labels at or above their ``thresholds`` (0.5 without one).
        thresholds: per-class decision thresholds ``(C,)`` of a multi-label model.

    Raises:
        OnnxModelError: the file is missing, a PyTorch checkpoint, not loadable by ONNX Runtime,
            or has no labels mapping, or one that does not fit the graph, or asks for a
            preprocessing this version does not know (an unknown ``resize_mode``).
        ConfigError: an unknown ``tta``.

    Example:
        >>> clf = OnnxClassifier("runs/demo/model.onnx")
        >>> clf.predict_batch([Image.open("a.jpg"), np.asarray(Image.open("b.png"))], top_k=1)
        [[('cat', 0.97)], [('dog', 0.88)]]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        tta: str = "none",
    ):
        self.tta = check_tta(tta)
        self.path = Path(path)
        if self.path.is_dir():  # a run folder: its model.onnx
            if not (self.path / "model.onnx").is_file():
                raise OnnxModelError(
                    f"{self.path} is a folder with no model.onnx. Pass a run folder that holds "
                    "one, or the .onnx file itself (tools/export.py writes one)."
                )
            self.path = self.path / "model.onnx"
        if not self.path.is_file():
            raise OnnxModelError(
                f"Model file not found: {self.path}. Pass the model.onnx from a run folder "
                "(runs/<name>/model.onnx) or one written by tools/export.py."
            )
        if self.path.suffix.lower() in _CHECKPOINT_SUFFIXES:
            raise OnnxModelError(
                f"{self.path} looks like a PyTorch checkpoint, not an ONNX model. Export it "
                "first with tools/export.py and pass the resulting .onnx file."
            )
        self.mapping = read_onnx_metadata(self.path)  # validated: the keys below exist
        self.classes: list[str] = classes_of(self.mapping)
        self.image_size = int(self.mapping["image_size"])
        self.resize = EvalResize.from_mapping(self.mapping)
        norm = self.mapping["normalization"]
        self._mean = np.asarray(norm["mean"], dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(norm["std"], dtype=np.float32).reshape(3, 1, 1)
        self.multilabel = self.mapping.get("task") == "multilabel"
        self.thresholds = np.asarray(self.mapping.get("thresholds") or [0.5] * len(self.classes))
        self._session = _open_session(self.path, providers or ["CPUExecutionProvider"])
        check_onnx_signature(self._session, self.path, self.mapping)

    def preprocess(self, image: ImageInput) -> np.ndarray:
        """One image as the model's input row: float32 ``(3, S, S)``, normalised.

        Raises:
            DataError: a file that cannot be decoded (the decoder's error is its cause).
            ValueError: a numpy array of another dtype or shape.
        """
        if isinstance(image, (str, os.PathLike)):
            pixels = _decode(image, self.resize)
        else:
            pixels = eval_preprocess(image_to_tensor(image), self.resize)
        x = pixels.numpy().astype(np.float32) / 255.0
        return (x - self._mean) / self._std

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """Raw ``(N, C)`` logits for a batch of preprocessed rows ``(N, 3, S, S)``."""
        (logits,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: inputs.astype(np.float32)})
        check_num_outputs(logits.shape, self.path, len(self.classes))  # if left symbolic
        return np.asarray(logits)

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` for a batch of preprocessed rows ``(N, 3, S, S)``
        (multi-label: each class's sigmoid); with ``tta="flip"``, the mean of each row's and its
        mirror's."""
        if self.tta == "flip":  # one call: the rows, then their mirrors
            both = self._probs(self.logits(np.concatenate([inputs, inputs[..., ::-1]])))
            return (both[: len(inputs)] + both[len(inputs) :]) / 2
        return self._probs(self.logits(inputs))

    def _probs(self, logits: np.ndarray) -> np.ndarray:
        """Logits ``(N, C)`` to probabilities, in float64: the sigmoids of a multi-label model,
        else the row-wise softmax."""
        logits = logits.astype(np.float64)
        if self.multilabel:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``k`` most likely ``(label, probability)`` pairs of each row of ``probs``, most
        likely first (ties in index order); ``k`` is capped at the number of classes. A
        multi-label model's rows are its labels at or above their thresholds, ``k`` at most."""
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {k}")
        kept = np.ones_like(probs, dtype=bool)
        if self.multilabel:  # the thresholds pick the labels first; k caps them after
            kept = probs >= np.asarray(self.thresholds, dtype=probs.dtype)[None]
        key = np.where(kept, -probs, np.inf)
        order = np.argsort(key, axis=1, kind="stable")[:, : min(k, len(self.classes))]
        return [
            [(self.classes[i], float(row[i])) for i in top if ok[i]]
            for row, ok, top in zip(probs, kept, order, strict=True)
        ]

    def predict(self, image: ImageInput, top_k: int = 5) -> list[tuple[str, float]]:
        """The top-k ``(label, probability)`` pairs of one image (a path, a PIL image or a numpy
        HWC uint8 array).

        Raises:
            DataError: a file that cannot be decoded.
        """
        return self.top_k(self.probabilities(self.preprocess(image)[None]), top_k)[0]

    def predict_batch(
        self, images: Sequence[ImageInput], top_k: int = 5
    ) -> list[list[tuple[str, float]]]:
        """``predict`` for several images, in one ONNX Runtime call. A file that cannot be
        decoded is skipped with a warning naming it, and its entry is ``[]``, so the entries
        stay aligned with ``images``."""
        inputs: dict[int, np.ndarray] = {}
        for i, image in enumerate(images):
            try:
                inputs[i] = self.preprocess(image)
            except DataError as e:
                log.warning("skipped %s", e)
        if not inputs:
            return [[] for _ in images]
        found = iter(self.top_k(self.probabilities(np.stack(list(inputs.values()))), top_k))
        return [next(found) if i in inputs else [] for i in range(len(images))]

    def __repr__(self) -> str:
        n, size = len(self.classes), self.image_size
        tta = f", tta={self.tta!r}" if self.tta != "none" else ""
        return f"OnnxClassifier({str(self.path)!r}, {n} classes, {size}x{size} images{tta})"


def _decode(path: str | os.PathLike[str], resize: EvalResize) -> Any:
    """A file's uint8 pixels, decoded with Pillow and preprocessed as validation does (large
    JPEGs at reduced size, see ``trainer.data.reduced``)."""
    try:
        return load_preprocessed(path, resize)
    except Exception as e:  # any decoder failure means "not a readable image"
        raise DataError(
            f"{path}: cannot decode it ({type(e).__name__}: {e}); remove it or replace it "
            "with a readable image."
        ) from e


def _open_session(path: Path, providers: Sequence[str]) -> Any:
    import onnxruntime as ort  # deferred: importing it costs time, and training never needs it

    try:
        return ort.InferenceSession(str(path), providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise OnnxModelError(
            f"onnxruntime cannot load {path} ({type(exc).__name__}: {exc}). Re-export the model "
            "with tools/export.py."
        ) from exc
