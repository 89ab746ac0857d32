from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.conftest import make_tree, tree_digest
from trainer.data import ImageFolderData, eval_preprocess, load_image, resize_size
from trainer.errors import DataError


def _data(root: Path, **kwargs: object) -> ImageFolderData:
    kwargs.setdefault("img_size", 16)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("workers", 0)
    return ImageFolderData(root, **kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- layout + loaders


def test_tiny_tree_classes_counts_and_batches(tiny_tree: Path) -> None:
    data = _data(tiny_tree)
    assert data.classes == ["bird", "cat", "dog"]
    assert data.class_to_idx == {"bird": 0, "cat": 1, "dog": 2}
    assert data.idx_to_class == {0: "bird", 1: "cat", 2: "dog"}
    assert data.num_classes == 3
    assert data.class_counts == {"train": [4, 6, 5], "val": [4, 6, 5], "test": [0, 0, 0]}
    assert data.sampler.mode == "none" and data.test_loader() is None
    assert data.bad_files == [] and data.ignored_files == []
    for loader in (data.train_loader(), data.val_loader()):
        images, targets = next(iter(loader))
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)
        assert targets.dtype == torch.int64 and targets.shape == (4,)
        assert sum(len(t) for _, t in loader) == 15
    val_targets = torch.cat([t for _, t in data.val_loader()]).tolist()
    assert val_targets == sorted(val_targets)  # val keeps file order


@pytest.mark.parametrize("val_name", ["valid", "validation"])
def test_val_aliases_and_test_split(tmp_path: Path, val_name: str) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2}, splits=("train", val_name, "test"))
    data = _data(tmp_path)
    assert len(data.val_samples) == 4 and len(data.test_samples) == 4
    loader = data.test_loader()
    assert loader is not None
    assert next(iter(loader))[0].shape == (4, 3, 16, 16)


def test_unsplit_tree_is_split_stratified_and_deterministic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path, {"a": 10, "b": 5, "c": 1}, splits=())
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = _data(tmp_path, val_fraction=0.2, seed=3)
    assert data.class_counts["train"] == [8, 4, 1]
    assert data.class_counts["val"] == [2, 1, 0]
    assert "c" in caplog.text and "single" in caplog.text
    again = _data(tmp_path, val_fraction=0.2, seed=3)
    assert again.val_samples == data.val_samples
    other = _data(tmp_path, val_fraction=0.2, seed=4)
    assert other.val_samples != data.val_samples
    assert not set(data.val_samples) & set(data.train_samples)


def test_file_rules_nested_hidden_ignored_case_and_symlinks(tmp_path: Path) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2})
    a = tmp_path / "train" / "a"
    (a / "sub" / "deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(a / "sub" / "deeper" / "x.PNG")
    Image.new("RGB", (8, 8)).save(a / "UPPER.JPEG", format="JPEG")
    (a / ".DS_Store").write_bytes(b"junk")
    (a / "._0.png").write_bytes(b"appledouble")
    (a / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(a / ".ipynb_checkpoints" / "y.png")
    (tmp_path / "train" / "__MACOSX").mkdir()
    (a / "notes.txt").write_text("hi")
    (tmp_path / "train" / "README.md").write_text("hi")
    os.symlink(a, a / "sub" / "loop")  # a loop: must not hang or count twice
    data = _data(tmp_path)
    assert data.classes == ["a", "b"]
    assert data.class_counts["train"] == [4, 2]
    assert {p.name for p in data.ignored_files} == {"notes.txt", "README.md"}


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.write_text("x"), "is a file"),
        (lambda r: r.mkdir(), "holds no folders"),
        (lambda r: make_tree(r, {"a": 1, "b": 1}, splits=("val",)), "no train/"),
        (lambda r: make_tree(r, {"a": 1, "b": 1}, splits=("train",)), "no val/"),
        (lambda r: make_tree(r, {"a": 2}), "at least two"),
        (lambda r: make_tree(r, {"a": 2}, splits=()), "at least two"),
        (lambda r: (make_tree(r, {"a": 1, "b": 1}), (r / "train" / "empty").mkdir()), "'empty'"),
        (
            lambda r: (make_tree(r, {"a": 1, "b": 1}), make_tree(r, {"zebra": 1}, splits=("val",))),
            "'zebra'.*Train classes: a, b",
        ),
    ],
    ids=[
        "missing",
        "file",
        "empty",
        "val-only",
        "train-only",
        "one-class",
        "one-class-flat",
        "empty-class",
        "unknown-val-class",
    ],
)
def test_tree_errors(tmp_path: Path, setup: object, match: str) -> None:
    root = tmp_path / "data"
    setup(root)  # type: ignore[operator]
    with pytest.raises(DataError, match=match) as info:
        _data(root)
    assert str(root) in str(info.value)


def test_train_class_missing_from_val_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2, "c": 2}, splits=("train",))
    make_tree(tmp_path, {"a": 2, "b": 2}, splits=("val",))
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = _data(tmp_path)
    assert data.class_counts["val"] == [2, 2, 0]
    assert "c" in caplog.text


# ----------------------------------------------------------------------------- bad files


def test_bad_files_are_skipped_with_a_warning(
    tiny_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tiny_tree / "train" / "cat" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = _data(tiny_tree, max_bad_fraction=0.1)
    assert [p for p, _ in data.bad_files] == [broken]
    assert broken not in {p for p, _ in data.train_samples}
    assert data.class_counts["train"] == [4, 6, 5]
    assert "broken.jpg" in caplog.text


def test_too_many_bad_files_is_an_error(tiny_tree: Path) -> None:
    for i in range(3):
        (tiny_tree / "val" / "dog" / f"bad{i}.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="max-bad-fraction") as info:
        _data(tiny_tree, max_bad_fraction=0.05)
    assert "bad0.png" in str(info.value)


def test_without_verify_a_bad_file_fails_in_the_loader_naming_it(tiny_tree: Path) -> None:
    (tiny_tree / "val" / "bird" / "0.png").write_bytes(b"nope")
    data = _data(tiny_tree, verify=False)
    with pytest.raises(DataError, match=r"0\.png"):
        list(data.val_loader())


# ----------------------------------------------------------------------------- sampler + weights


def test_balanced_sampler_drives_the_train_loader(tiny_tree: Path) -> None:
    data = _data(tiny_tree, sampler="balanced")
    assert data.sampler is not None
    targets = torch.cat([t for _, t in data.train_loader()])
    assert targets.tolist() == [data.train_samples[i][1] for i in data.sampler.last_indices]
    assert sum(data.sampler.class_counts) == 15


def test_manual_class_weights_by_name(tiny_tree: Path) -> None:
    data = _data(tiny_tree, sampler="manual", class_weights={"cat": 0.0, "dog": 0.0})
    assert data.sampler is not None
    targets = torch.cat([t for _, t in data.train_loader()])
    assert set(targets.tolist()) == {data.class_to_idx["bird"]}
    with pytest.raises(DataError, match=r"'lion'.*Known classes: bird, cat, dog"):
        _data(tiny_tree, sampler="manual", class_weights={"lion": 2.0})


# ----------------------------------------------------------------------------- mapping + preprocess


def test_labels_mapping_contract(tiny_tree: Path, tmp_path: Path) -> None:
    data = _data(tiny_tree, img_size=224)
    out = tmp_path / "run" / "labels_mapping.json"
    data.save_labels_mapping(out)
    mapping = json.loads(out.read_text())
    assert mapping == {
        "class_to_idx": {"bird": 0, "cat": 1, "dog": 2},
        "idx_to_class": {"0": "bird", "1": "cat", "2": "dog"},
        "image_size": 224,
        "resize_size": 256,
        "interpolation": "bilinear",
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    assert resize_size(224) == 256


def test_eval_preprocess_matches_the_val_loader(tiny_tree: Path) -> None:
    data = _data(tiny_tree, batch_size=1)
    images, _ = next(iter(data.val_loader()))
    path = data.val_samples[0][0]
    assert torch.equal(eval_preprocess(load_image(path), 16), images[0])


def test_ram_cache_gives_the_same_val_batches(tiny_tree: Path) -> None:
    disk = _data(tiny_tree, img_size=8)
    ram = _data(tiny_tree, img_size=8, cache="ram")
    assert ram.cached and not disk.cached
    for (a, ta), (b, tb) in zip(disk.val_loader(), ram.val_loader(), strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert next(iter(ram.train_loader()))[0].shape == (4, 3, 8, 8)


def test_ram_cache_over_budget_falls_back_to_disk(tiny_tree: Path) -> None:
    with pytest.warns(UserWarning, match="cache_max_bytes"):
        data = _data(tiny_tree, cache="ram", cache_max_bytes=1000)
    assert not data.cached
    assert next(iter(data.val_loader()))[0].shape == (4, 3, 16, 16)


def test_user_files_are_never_modified(tiny_tree: Path) -> None:
    before = tree_digest(tiny_tree, mtimes=True)
    data = _data(tiny_tree, cache="ram", sampler="balanced")
    for loader in (data.train_loader(), data.val_loader()):
        for _ in loader:
            pass
    assert tree_digest(tiny_tree, mtimes=True) == before


def test_default_workers(tiny_tree: Path) -> None:
    data = ImageFolderData(tiny_tree, img_size=16)
    assert data.workers == min(8, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- decoding


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (12, 10, 1), dtype=np.uint8)


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)  # type: ignore[arg-type]
    return path


def _on_white(img: Image.Image) -> np.ndarray:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


@pytest.mark.parametrize(
    ("name", "make", "reference", "tol"),
    [
        ("l.png", lambda: Image.fromarray(RGB).convert("L"), lambda i: i.convert("RGB"), 0),
        ("p.png", lambda: Image.fromarray(RGB).convert("P"), lambda i: i.convert("RGB"), 0),
        ("p.gif", lambda: Image.fromarray(RGB).convert("P"), lambda i: i.convert("RGB"), 0),
        ("rgba.png", lambda: Image.fromarray(np.concatenate([RGB, ALPHA], 2)), _on_white, 1),
        (
            "la.png",
            lambda: Image.fromarray(np.concatenate([RGB, ALPHA], 2)).convert("LA"),
            _on_white,
            1,
        ),
        ("rgba.webp", lambda: Image.fromarray(np.concatenate([RGB, ALPHA], 2)), _on_white, 1),
        ("cmyk.jpg", lambda: Image.fromarray(RGB).convert("CMYK"), lambda i: i.convert("RGB"), 1),
        ("rgb.bmp", lambda: Image.fromarray(RGB), lambda i: i.convert("RGB"), 0),
        ("rgb.tiff", lambda: Image.fromarray(RGB), lambda i: i.convert("RGB"), 0),
        ("rgba.tiff", lambda: Image.fromarray(np.concatenate([RGB, ALPHA], 2)), _on_white, 1),
    ],
)
def test_load_image_matches_pil(
    tmp_path: Path, name: str, make: object, reference: object, tol: int
) -> None:
    path = _save(make(), tmp_path / name)  # type: ignore[operator]
    out = load_image(path)
    assert out.dtype == torch.uint8 and out.shape == (3, 12, 10)
    with Image.open(path) as img:
        ref = np.asarray(reference(img)).astype(int)  # type: ignore[operator]
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - ref).max() <= tol


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_is_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = load_image(_save(img, tmp_path / f"x.{fmt}"))
    assert out.shape == (3, 1, 4)
    assert out[0, 0].tolist() == [0, 1, 128, 255]
    assert torch.equal(out[0], out[2])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(RGB)  # 10 wide, 12 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(path) as opened:
        ref = np.asarray(ImageOps.exif_transpose(opened).convert("RGB")).astype(int)
    out = load_image(path)
    assert out.shape == (3, 10, 12) == (3, *ref.shape[:2])
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - ref).mean() < 2


def test_load_image_reads_from_memory_equivalent_bytes(tmp_path: Path) -> None:
    # The PIL fallback and torchvision agree on a plain RGB PNG.
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(buf.getvalue())
    assert np.array_equal(load_image(path).permute(1, 2, 0).numpy(), RGB)


def test_decompression_bomb_is_skipped_with_a_reason(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from trainer.data import load_image

    root = make_tree(tmp_path / "data", {"a": 30, "b": 30}, size=(8, 8))
    Image.new("RGB", (40, 40)).save(root / "train" / "a" / "huge.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "train" / "b" / "tiny.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40x40 is now "over twice the limit"
    with pytest.raises(ValueError, match="too large"):
        load_image(root / "train" / "a" / "huge.png")
    data = _data(root)
    assert [(p.name, "too large" in r) for p, r in data.bad_files] == [("huge.png", True)]
    tiny = load_image(root / "train" / "b" / "tiny.png")  # a 1x1 image works
    assert tiny.shape == (3, 1, 1) and tiny[:, 0, 0].tolist() == [10, 200, 30]
    images, _ = next(iter(data.train_loader()))
    assert images.shape[1:] == (3, data.img_size, data.img_size)


def test_a_class_with_one_image_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_tree(tmp_path, {"a": 3, "lonely": 1})
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = _data(tmp_path)
    assert data.class_counts["train"] == [3, 1]
    assert "lonely" in caplog.text


def test_truncated_jpeg_is_skipped(tiny_tree: Path) -> None:
    src = tiny_tree / "train" / "cat" / "1.jpg"
    whole = src.read_bytes()
    cut = tiny_tree / "train" / "cat" / "truncated.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    data = _data(tiny_tree, max_bad_fraction=0.2)
    assert [p.name for p, _ in data.bad_files] == ["truncated.jpg"]
    assert src.read_bytes() == whole
