"""trainer.export_formats and trainer.export_check: format names, file names, the bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data.samples import SampleArray
from trainer.errors import DataError
from trainer.export_check import check_logits, sample_images
from trainer.export_formats import FormatError, failed_path, format_path, parse_formats


def test_formats_are_parsed_in_a_fixed_order_with_onnx_always_first() -> None:
    assert parse_formats("openvino, onnx-int8") == ["onnx", "onnx-int8", "openvino"]
    assert parse_formats("onnx") == ["onnx"]
    assert parse_formats(["onnx-fp16", "ONNX-FP16"]) == ["onnx", "onnx-fp16"]


def test_an_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(FormatError, match="'tflite'.*onnx, onnx-fp16, onnx-int8, openvino"):
        parse_formats("onnx,tflite")


def test_file_names_beside_the_onnx_model_and_their_failed_names() -> None:
    onnx = Path("run/model.onnx")
    names = {f: format_path(onnx, f) for f in ("onnx", "onnx-fp16", "onnx-int8", "openvino")}
    assert names == {
        "onnx": onnx,
        "onnx-fp16": Path("run/model.fp16.onnx"),
        "onnx-int8": Path("run/model.int8.onnx"),
        "openvino": Path("run/openvino/model.xml"),
    }
    assert failed_path(names["onnx-int8"], "onnx-int8") == Path("run/model.int8.FAILED.onnx")
    assert failed_path(names["openvino"], "openvino") == Path("run/openvino.FAILED/model.xml")


def _logits(n: int, flips: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch-like logits right on every image, and a format's that differ on ``flips``."""
    reference = np.full((n, 3), -1.0, np.float32)
    reference[np.arange(n), labels] = 1.0
    logits = reference.copy()
    logits[:flips] = np.roll(logits[:flips], 1, axis=1)
    return logits, reference


@pytest.mark.parametrize(
    ("fmt", "flips", "passed"),
    [
        ("onnx-int8", 1, True),  # 99% agreement, accuracy 1 point down: at both bars
        ("onnx-int8", 2, False),  # 98% agreement, but 2 points of accuracy lost
        ("onnx-fp16", 0, True),
        ("onnx-fp16", 1, False),  # 99% < 99.5%
    ],
)
def test_bars_of_the_reduced_precision_formats(fmt: str, flips: int, passed: bool) -> None:
    labels = np.arange(100) % 3
    logits, reference = _logits(100, flips, labels)
    entry = check_logits(fmt, logits, reference, labels)
    assert entry["passed"] is passed, entry["failures"]
    assert entry["top1_agreement"] == pytest.approx(1 - flips / 100)
    assert entry["accuracy"] == pytest.approx(1 - flips / 100)
    assert entry["torch_accuracy"] == 1.0
    assert (entry["max_abs_diff"] is None) == (fmt == "onnx-int8")  # float formats only


def test_int8_may_disagree_where_pytorch_was_wrong() -> None:
    """2% disagreement is within the INT8 bar when it costs no accuracy."""
    labels = np.arange(100) % 3
    logits, reference = _logits(100, 2, labels)
    reference[:2] = logits[:2]  # PyTorch wrong on the two ...
    logits[:2] = np.roll(logits[:2], 1, axis=1)  # ... and INT8 wrong in another way
    entry = check_logits("onnx-int8", logits, reference, labels)
    assert entry["top1_agreement"] == pytest.approx(0.98) and entry["passed"], entry["failures"]


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_fp32_formats_keep_todays_logit_tolerance(fmt: str) -> None:
    labels = np.arange(10) % 3
    logits, reference = _logits(10, 0, labels)
    assert check_logits(fmt, logits + 5e-4, reference, labels)["passed"]
    entry = check_logits(fmt, logits + 2e-3, reference, labels)
    assert not entry["passed"] and "logit" in entry["failures"][0]


class _Classifier:
    """What sample_images uses of an OnnxClassifier: a file's row is its index, as pixels."""

    image_size = 2

    def preprocess(self, path: object) -> np.ndarray:
        if str(path) == "bad.png":
            raise DataError("bad.png: cannot decode it")
        return np.full((3, 2, 2), float(Path(str(path)).stem), np.float32)


def test_sample_images_is_a_seeded_draw_across_the_classes_skipping_bad_files() -> None:
    samples = SampleArray([(f"{i}.png", i // 50) for i in range(200)])  # 4 classes, in order
    images, labels = sample_images(_Classifier(), samples, 20, seed=3)  # type: ignore[arg-type]
    again, _ = sample_images(_Classifier(), samples, 20, seed=3)  # type: ignore[arg-type]
    other, _ = sample_images(_Classifier(), samples, 20, seed=4)  # type: ignore[arg-type]
    drawn = images[:, 0, 0, 0].astype(int)
    assert len(drawn) == 20 and np.array_equal(images, again) and not np.array_equal(images, other)
    assert set(labels.tolist()) == {0, 1, 2, 3}  # not the first 20 files: one class
    assert labels.tolist() == (drawn // 50).tolist()  # each image keeps its label
    everything, _ = sample_images(_Classifier(), samples, 500)  # type: ignore[arg-type]
    assert everything[:, 0, 0, 0].tolist() == list(range(200))
    with_bad = SampleArray([("1.png", 0), ("bad.png", 1), ("2.png", 2)])
    images, labels = sample_images(_Classifier(), with_bad, 3)  # type: ignore[arg-type]
    assert images[:, 0, 0, 0].tolist() == [1, 2] and labels.tolist() == [0, 2]


def _label_logits(flip: dict[int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """100 images, 3 classes, every label set: PyTorch-like logits +2 on an image's labels and
    -2 elsewhere, a format's the same but for class 0 of the images in ``flip`` (its logit)."""
    labels = ((np.arange(100)[:, None] >> np.arange(3)) & 1).astype(np.float32)
    reference = np.where(labels > 0, 2.0, -2.0).astype(np.float32)
    logits = reference.copy()
    for i, value in flip.items():
        logits[i, 0] = value
    return logits, reference, labels


def test_a_multilabel_format_is_held_to_its_per_label_decisions_at_the_thresholds() -> None:
    # Images 2 and 4 lack class 0; their other labels keep top-1 where it was, but class 0
    # now reaches a 0.5 threshold: 2 of 300 decisions differ.
    logits, reference, labels = _label_logits({2: 1.0, 4: 1.0})
    assert (logits.argmax(1) == reference.argmax(1)).all()  # top-1 would see no difference
    entry = check_logits("onnx-fp16", logits, reference, labels, [0.5, 0.5, 0.5])
    assert entry["agreement"] == "label_agreement" and entry["metric"] == "mAP"
    assert entry["label_agreement"] == pytest.approx(1 - 2 / 300)
    assert not entry["passed"] and entry["failures"] == ["label agreement 0.9933 < 0.995"]
    assert "top1_agreement" not in entry and "accuracy" not in entry
    # At a class-0 threshold of 0.8 (sigmoid(1) is 0.73, sigmoid(2) 0.88) they are PyTorch's.
    entry = check_logits("onnx-fp16", logits, reference, labels, [0.8, 0.5, 0.5])
    assert entry["label_agreement"] == 1.0 and entry["passed"], entry["failures"]
    # The figures are the engine's: mAP and micro F1 at the thresholds, for both runtimes.
    assert entry["mAP"] == entry["torch_mAP"] == 1.0  # +1 still ranks below every +2
    assert entry["torch_micro_f1"] == 1.0 and entry["micro_f1"] == 1.0


def test_int8_of_a_multilabel_model_may_not_lose_more_than_a_point_of_map() -> None:
    # Three images without class 0 now rank above all of its positives: 1% of the decisions
    # (within INT8's 98%), but class 0's AP falls to 50/53 (its 50 positives tie below them).
    logits, reference, labels = _label_logits({2: 3.0, 4: 3.0, 6: 3.0})
    entry = check_logits("onnx-int8", logits, reference, labels, [0.5, 0.5, 0.5])
    expected = (50 / 53 + 1 + 1) / 3
    assert entry["mAP"] == pytest.approx(expected) and entry["torch_mAP"] == 1.0
    assert entry["label_agreement"] == pytest.approx(0.99)
    assert not entry["passed"] and entry["failures"] == [
        f"mAP {expected:.4f} is more than 1 point below PyTorch's 1.0000"
    ]
