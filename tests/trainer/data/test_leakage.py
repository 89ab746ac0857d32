"""--check-leakage: byte-identical images in two splits, for trees and label files alike."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from tests.trainer.data.test_labelfile import tree_rows, write_labels
from trainer.data.leakage import find_leaks


def leaky_tree(root: Path) -> Path:
    """A train/val/test tree where train/cat/0.png is also val/dog/copy.png (another name and
    class) and test/cat/x.png; and train/dog/1.jpg twice within train (not a leak)."""
    make_tree(root, splits=("train", "val", "test"))
    shutil.copy(root / "train/cat/0.png", root / "val/dog/copy.png")
    shutil.copy(root / "train/cat/0.png", root / "test/cat/x.png")
    shutil.copy(root / "train/dog/1.jpg", root / "train/dog/again.jpg")
    return root


@pytest.mark.parametrize("source", ["tree", "csv", "jsonl"])
def test_leaks_are_found_by_content_and_reported(
    tmp_path: Path, source: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = leaky_tree(tmp_path / "tree")
    data_path = root
    if source != "tree":
        data_path = write_labels(root / f"labels.{source}", tree_rows(root))
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = small_data(data_path, check_leakage=True)
    assert data.leaks is not None and len(data.leaks) == 1
    leak = data.leaks[0]
    assert leak["splits"] == ["train", "val", "test"]
    assert [f["path"] for f in leak["files"]] == [
        str(root / "train/cat/0.png"), str(root / "val/dog/copy.png"), str(root / "test/cat/x.png")
    ]  # fmt: skip
    assert len(leak["sha256"]) == 64
    assert data.report()["leakage"] == data.leaks
    assert "leakage: 1 image(s) in more than one split" in data.summary()
    assert "val/dog/copy.png" in caplog.text


def test_no_leak_and_not_checked(tmp_path: Path) -> None:
    root = make_tree(tmp_path, splits=("train", "val"))
    shutil.copy(root / "train/cat/0.png", root / "train/dog/same.png")  # within one split
    checked = small_data(root, check_leakage=True)
    assert checked.leaks == [] and checked.report()["leakage"] == []
    unchecked = small_data(root)
    assert unchecked.leaks is None and "leakage" not in unchecked.report()


def test_same_size_different_content_is_not_a_leak(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 100)
    b.write_bytes(b"y" * 100)
    c = tmp_path / "c.bin"
    c.write_bytes(b"x" * 100)
    leaks = find_leaks({"train": [(a, 0)], "val": [(b, 0), (c, 1)]})
    assert [[f["path"] for f in g["files"]] for g in leaks] == [[str(a), str(c)]]
