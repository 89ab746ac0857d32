"""The tree scan: layouts, split folders, the seeded split, file rules and tree errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from trainer.data import ImageFolderData
from trainer.data.scan import scan_tree
from trainer.errors import DataError


@pytest.mark.parametrize("val_name", ["valid", "validation"])
def test_val_aliases_and_test_split(tmp_path: Path, val_name: str) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2}, splits=("train", val_name, "test"))
    data = small_data(tmp_path)
    assert len(data.val_samples) == 4 and len(data.test_samples) == 4
    loader = data.test_loader()
    assert loader is not None
    assert next(iter(loader))[0].shape == (4, 3, 16, 16)


def test_unsplit_tree_is_split_stratified_and_deterministic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path, {"a": 10, "b": 5, "c": 1}, splits=())
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = small_data(tmp_path, val_fraction=0.2, seed=3)
    assert data.class_counts["train"] == [8, 4, 1]
    assert data.class_counts["val"] == [2, 1, 0]
    assert "c" in caplog.text and "single" in caplog.text
    again = small_data(tmp_path, val_fraction=0.2, seed=3)
    assert again.val_samples == data.val_samples
    other = small_data(tmp_path, val_fraction=0.2, seed=4)
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
    data = small_data(tmp_path)
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
        small_data(root)
    assert str(root) in str(info.value)


def test_train_class_missing_from_val_only_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2, "c": 2}, splits=("train",))
    make_tree(tmp_path, {"a": 2, "b": 2}, splits=("val",))
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = small_data(tmp_path)
    assert data.class_counts["val"] == [2, 2, 0]
    assert "c" in caplog.text


@pytest.mark.parametrize("splits", [(), ("train", "val")], ids=["class-folders", "train-val"])
def test_links_up_the_tree_neither_drop_nor_steal_images(
    tmp_path: Path, splits: tuple[str, ...]
) -> None:
    counts = {"a": 4, "b": 4, "c": 4}
    make_tree(tmp_path, counts, splits=splits)
    base = tmp_path / splits[0] if splits else tmp_path
    (base / "a" / "sub").mkdir()
    loops = {
        base / "a" / "sub" / "up": tmp_path,  # a loop: the tree's root, above every class
        base / "b" / "parent": base / "b",  # a loop onto the class's own folder
        base / "a" / "c_too": base / "c",  # not a loop, but a way into class c's images
    }
    for link, target in loops.items():
        os.symlink(target, link)
    data = ImageFolderData(tmp_path, img_size=16, workers=0, verify=False, val_fraction=0.25)
    assert data.classes == ["a", "b", "c"]
    for split in ("train", "val"):
        samples = data.train_samples if split == "train" else data.val_samples
        for path, label in samples:
            # Each image is counted once, in the class whose folder it really is in.
            assert path.resolve().parent.name == data.classes[label], (path, label)
        assert len({p.resolve() for p, _ in samples}) == len(samples)
    totals = [sum(column) for column in zip(*data.class_counts.values(), strict=True)]
    assert totals == [4 * (len(splits) or 1)] * 3  # every class keeps all of its own images
    report = json.loads(json.dumps(data.report()))  # what data_report.json holds
    assert {r["path"] for r in report["skipped_links"]} == {str(p) for p in loops}
    reasons = {r["path"]: r["reason"] for r in report["skipped_links"]}
    assert "a loop" in reasons[str(base / "a" / "sub" / "up")]
    assert "another class's folder" in reasons[str(base / "a" / "c_too")]


def _nested(root: Path, classes: tuple[str, ...]) -> list[str]:
    names = ["a/z.png", "a.b/x.png", "a0.png", "a-b/y.png", "b.png"]
    for cls in classes:
        for name in names:
            (root / cls / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(root / cls / name)
    return names


def test_images_in_subfolders_are_in_path_order(tmp_path: Path) -> None:
    # The scan keeps paths as strings; they must sort as pathlib.Path sorts (part by part),
    # as they did, which is not plain string order: "a/z.png" < "a-b/y.png" < "a.b/x.png".
    for split in ("train", "val"):
        names = _nested(tmp_path / split, ("cat", "dog"))
    expected = sorted(tmp_path / "train" / "cat" / n for n in names)
    assert [str(p) for p in expected] != sorted(str(p) for p in expected)  # the case at hand
    scan = scan_tree(tmp_path, val_fraction=0.2, seed=0)
    assert [p for p, t in scan.train if t == 0] == expected
    # A tree split by seed: within each split and class, in Path order too.
    _nested(tmp_path / "bare", ("cat", "dog"))
    split = scan_tree(tmp_path / "bare", val_fraction=0.4, seed=3)
    for samples in (split.train, split.val):
        cats = [p for p, t in samples if t == 0]
        assert cats == sorted(cats) and len(cats) >= 2


@pytest.mark.parametrize("verify", ["header", "none"])
def test_a_fifo_named_like_an_image_is_listed_not_opened(tmp_path: Path, verify: str) -> None:
    # Opening a FIFO blocks until something writes to it: the start-up check would hang.
    make_tree(tmp_path, {"a": 10, "b": 10})
    fifo = tmp_path / "train" / "a" / "x.jpg"
    os.mkfifo(fifo)
    data = small_data(tmp_path, verify=verify, max_bad_fraction=0.1)
    assert fifo not in [p for p, _ in data.train_samples]
    assert data.class_counts["train"] == [10, 10]
    report = json.loads(json.dumps(data.report()))  # what data_report.json holds
    assert [(r["path"], "not a regular file" in r["reason"]) for r in report["bad_files"]] == [
        (str(fifo), True)
    ]
    again = small_data(tmp_path, verify=verify, max_bad_fraction=0.1)  # the stored scan
    assert json.loads(json.dumps(again.report()))["bad_files"] == report["bad_files"]
