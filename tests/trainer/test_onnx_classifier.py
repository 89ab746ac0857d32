"""OnnxClassifier: the exported model and its mapping, validation preprocessing, top-k."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

from trainer import OnnxClassifier
from trainer.data import eval_preprocess, load_image, load_preprocessed
from trainer.data.transforms import EvalResize
from trainer.errors import ConfigError, DataError
from trainer.export import OnnxModelError, export_onnx

IMG = 16
CLASSES = ["bird", "cat", "dog", "fox"]
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.2]


def _mapping() -> dict[str, Any]:
    return {
        "class_to_idx": {c: i for i, c in enumerate(CLASSES)},
        "idx_to_class": {str(i): c for i, c in enumerate(CLASSES)},
        "num_classes": len(CLASSES),
        "image_size": IMG,
        "normalization": {"mean": MEAN, "std": STD},
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("clf")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(32, len(CLASSES)),
    ).eval()  # fmt: skip
    path = export_onnx(model, root / "model.onnx", labels_mapping=_mapping())
    rng = np.random.default_rng(0)
    images = []
    for i, (w, h) in enumerate([(20, 30), (40, 18), (17, 17)]):
        images.append(root / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images[-1])
    return {"model": model, "path": path, "images": images, "root": root}


def _torch_probs(model: nn.Module, path: Path) -> np.ndarray:
    """Validation's preprocessing by hand, then PyTorch."""
    x = eval_preprocess(load_image(path), IMG).float() / 255
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        return model(x[None]).softmax(1)[0].double().numpy()


def _same_top(a: list[tuple[str, float]], b: list[tuple[str, float]], abs: float = 1e-6) -> bool:
    """The same labels in the same order, probabilities within ``abs`` (pytest.approx takes no
    pairs since pytest 9.2)."""
    return [label for label, _ in a] == [label for label, _ in b] and [
        p for _, p in a
    ] == pytest.approx([p for _, p in b], abs=abs)


def test_predict_takes_paths_pil_images_and_arrays(exported: dict[str, Any]) -> None:
    clf = OnnxClassifier(exported["path"])
    assert clf.classes == CLASSES and clf.image_size == IMG and clf.mapping["num_classes"] == 4
    for path in exported["images"]:
        expected = _torch_probs(exported["model"], path)
        order = np.argsort(-expected)[:2]
        top = clf.predict(path, top_k=2)
        assert [label for label, _ in top] == [CLASSES[i] for i in order]
        assert [p for _, p in top] == pytest.approx(expected[order].tolist(), abs=1e-5)
        with Image.open(path) as pil:
            assert _same_top(clf.predict(pil, top_k=2), top)
            assert _same_top(clf.predict(np.asarray(pil), top_k=2), top)
            gray = np.asarray(pil.convert("L"))
        assert len(clf.predict(gray)) == 4  # (H, W) arrays are grayscale, repeated to RGB


def test_predict_batch_is_predict_for_each(exported: dict[str, Any]) -> None:
    clf = OnnxClassifier(exported["path"])
    paths = exported["images"]
    batch = clf.predict_batch(paths, top_k=10)  # capped at the 4 classes
    assert all(len(top) == 4 for top in batch)
    assert all(sum(p for _, p in top) == pytest.approx(1.0) for top in batch)
    for path, top in zip(paths, batch, strict=True):
        assert _same_top(top, clf.predict(path, top_k=4))
    assert clf.predict_batch([]) == []


def test_the_sidecar_serves_a_model_without_metadata_old_files_too(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    proto = onnx.load(exported["path"])
    del proto.metadata_props[:]
    bare = tmp_path / "model.onnx"
    onnx.save(proto, bare)
    with pytest.raises(OnnxModelError, match="labels_mapping.json"):
        OnnxClassifier(bare)
    old = {k: v for k, v in _mapping().items() if k != "num_classes"}  # before num_classes
    (tmp_path / "labels_mapping.json").write_text(json.dumps(old))
    clf = OnnxClassifier(bare)
    assert clf.mapping["num_classes"] == 4
    path = exported["images"][0]
    assert _same_top(clf.predict(path), OnnxClassifier(exported["path"]).predict(path))


def test_user_errors(exported: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match=r"not found: .*missing\.onnx"):
        OnnxClassifier(tmp_path / "missing.onnx")
    (tmp_path / "best.pt").write_bytes(b"x")
    with pytest.raises(OnnxModelError, match="PyTorch checkpoint.*tools/export.py"):
        OnnxClassifier(tmp_path / "best.pt")
    with pytest.raises(OnnxModelError, match=r"folder with no model\.onnx"):
        OnnxClassifier(tmp_path)
    # A run folder stands for its model.onnx.
    assert OnnxClassifier(Path(exported["path"]).parent).path == Path(exported["path"])
    clf = OnnxClassifier(exported["path"])
    with pytest.raises(ValueError, match="uint8"):
        clf.predict(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="top_k"):
        clf.predict(exported["images"][0], top_k=0)


def test_an_unreadable_file_is_an_error_alone_and_skipped_in_a_batch(
    exported: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    clf = OnnxClassifier(exported["path"])
    with pytest.raises(DataError, match=r"broken\.png: cannot decode"):
        clf.predict(broken)
    good = exported["images"][0]
    with caplog.at_level("WARNING", logger="trainer"):
        batch = clf.predict_batch([broken, good, broken], top_k=2)
    assert batch[0] == [] and batch[2] == []  # entries stay aligned with the images
    assert _same_top(batch[1], clf.predict(good, top_k=2))
    assert caplog.text.count("broken.png") == 2
    assert clf.predict_batch([broken]) == [[]]


def _with_mapping(exported: dict[str, Any], folder: Path, **fields: Any) -> Path:
    """The exported model, its mapping in a sidecar with ``fields`` changed."""
    proto = onnx.load(exported["path"])
    del proto.metadata_props[:]
    folder.mkdir(exist_ok=True)
    onnx.save(proto, folder / "model.onnx")
    (folder / "labels_mapping.json").write_text(json.dumps({**_mapping(), **fields}))
    return folder / "model.onnx"


def _normalised(pixels: torch.Tensor) -> np.ndarray:
    x = pixels.float() / 255
    return ((x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)).numpy()


@pytest.mark.parametrize(
    "fields", [{"crop_pct": 1.0}, {"crop_pct": 0.5, "resize_size": 32}, {"resize_mode": "squash"}]
)
def test_crop_pct_and_resize_mode_of_the_mapping_are_honoured(
    exported: dict[str, Any], tmp_path: Path, fields: dict[str, Any]
) -> None:
    clf = OnnxClassifier(_with_mapping(exported, tmp_path / "m", **fields))
    resize = EvalResize(IMG, fields.get("crop_pct", 1.0), fields.get("resize_mode", "crop"))
    assert clf.resize == resize
    for path in exported["images"][:2]:  # landscape and portrait
        ours, default = (_normalised(load_preprocessed(path, r)) for r in (resize, IMG))
        assert np.array_equal(clf.preprocess(path), ours) and not np.allclose(ours, default)
        with Image.open(path) as pil:
            assert np.abs(clf.preprocess(pil) - ours).max() < 0.1  # full decode, not reduced


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resize_mode": "letterbox"}, r"resize_mode 'letterbox'.*does not know \(it knows crop, "
                                       r"squash\)"),
        ({"interpolation": "bicubic"}, "interpolation 'bicubic'.*does not know"),
        ({"crop_pct": 0}, r"crop_pct must be a number in \(0, 1\]"),
        ({"crop_pct": 1.5}, r"crop_pct must be a number in \(0, 1\]"),
        ({"crop_pct": "0.9"}, r"crop_pct must be a number in \(0, 1\]"),
        ({"resize_mode": "squash", "crop_pct": 0.9}, "squash keeps the whole image"),
        ({"crop_pct": 0.5, "resize_size": 18}, r"resize_size 18, but .* gives 32"),
    ],
)  # fmt: skip
def test_a_mapping_asking_for_what_this_version_cannot_honour_is_refused(
    exported: dict[str, Any], tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(OnnxModelError, match=message) as e:
        OnnxClassifier(_with_mapping(exported, tmp_path / "m", **fields))
    assert "labels_mapping.json" in str(e.value)  # names the file


def test_tta_flip_averages_the_image_and_its_mirror(exported: dict[str, Any]) -> None:
    clf = OnnxClassifier(exported["path"], tta="flip")
    plain = OnnxClassifier(exported["path"])
    assert "tta='flip'" in repr(clf)
    rows = np.stack([plain.preprocess(p) for p in exported["images"]])
    expected = (plain.probabilities(rows) + plain.probabilities(rows[..., ::-1].copy())) / 2
    assert np.allclose(clf.probabilities(rows), expected, atol=1e-7)
    assert not np.allclose(expected, plain.probabilities(rows), atol=1e-3)
    top = clf.predict_batch(exported["images"], top_k=4)
    assert np.allclose([[p for _, p in t] for t in top], np.sort(expected)[:, ::-1])
    with pytest.raises(ConfigError, match=r"tta must be one of none, flip.*'flop'"):
        OnnxClassifier(exported["path"], tta="flop")


def test_tta_flip_of_a_multilabel_model_averages_sigmoids_then_thresholds(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    fields = {"task": "multilabel", "activation": "sigmoid", "thresholds": [0.45, 0.5, 0.52, 0.55]}
    path = _with_mapping(exported, tmp_path / "ml", **fields)
    clf, plain = OnnxClassifier(path, tta="flip"), OnnxClassifier(path)
    rows = np.stack([plain.preprocess(p) for p in exported["images"]])
    sig = lambda z: 1 / (1 + np.exp(-z.astype(np.float64)))  # noqa: E731
    expected = (sig(plain.logits(rows)) + sig(plain.logits(rows[..., ::-1].copy()))) / 2
    assert np.allclose(clf.probabilities(rows), expected, atol=1e-7)
    assert not np.allclose(expected, plain.probabilities(rows), atol=1e-3)
    # The labels are those of the mean at the thresholds, most likely first.
    found = clf.predict_batch(exported["images"], top_k=4)
    for row, labels in zip(expected, found, strict=True):
        kept = [i for i in np.argsort(-row) if row[i] >= fields["thresholds"][i]]
        assert _same_top(labels, [(CLASSES[i], row[i]) for i in kept])
    assert any(found) and not all(len(f) == 4 for f in found)  # the thresholds cut some


def test_a_multilabel_top_k_caps_the_labels_at_their_thresholds_not_the_classes(
    exported: dict[str, Any], tmp_path: Path
) -> None:
    # The thresholds pick the labels, then top_k caps that list: a label above its threshold
    # is kept even when more probable classes sit below theirs.
    fields = {"task": "multilabel", "activation": "sigmoid", "thresholds": [0.9, 0.9, 0.9, 0.0]}
    clf = OnnxClassifier(_with_mapping(exported, tmp_path / "ml", **fields))
    probs = np.array([[0.8, 0.7, 0.6, 0.1], [0.95, 0.2, 0.3, 0.4]])
    assert clf.top_k(probs, 1) == [[(CLASSES[3], pytest.approx(0.1))],
                                   [(CLASSES[0], pytest.approx(0.95))]]  # fmt: skip
    assert [[c for c, _ in row] for row in clf.top_k(probs, 5)] == [
        [CLASSES[3]], [CLASSES[0], CLASSES[3]]
    ]  # fmt: skip
