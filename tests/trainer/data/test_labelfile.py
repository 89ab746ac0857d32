"""Label files (CSV and JSONL): the rows become the same samples a tree gives, and every kind of
bad row is an error naming ``file:line``."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import make_tree, tree_digest
from tests.trainer.data.conftest import small_data
from trainer.data.labelfile import read_label_file
from trainer.errors import DataError, UserError

Rows = Sequence[dict[str, object]]


def write_labels(path: Path, rows: Rows, keys: Sequence[str] | None = None) -> Path:
    """``rows`` as a CSV (columns ``keys``, default the first row's) or a JSONL file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(keys or rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tree_rows(root: Path, *, split: bool = True) -> list[dict[str, object]]:
    """One row per image of ``make_tree(root)``: its path relative to ``root``, its class
    (the folder) and, with ``split``, its split folder."""
    rows = []
    for p in sorted(root.rglob("*.*")):
        rel = p.relative_to(root)
        row: dict[str, object] = {"path": str(rel), "label": rel.parts[-2]}
        if split:
            row["split"] = rel.parts[0]
        rows.append(row)
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_label_file_gives_the_samples_the_tree_gives(tmp_path: Path, suffix: str) -> None:
    tree = make_tree(tmp_path / "tree", splits=("train", "val", "test"))
    rows = tree_rows(tree)[::-1]  # in no particular order: dog before cat before bird
    labels = write_labels(tree / f"labels{suffix}", rows)
    from_tree, from_file = small_data(tree), small_data(labels)
    assert from_file.classes == from_tree.classes == ["bird", "cat", "dog"]  # sorted labels
    assert from_file.train_samples == from_tree.train_samples
    assert from_file.val_samples == from_tree.val_samples
    assert from_file.test_samples == from_tree.test_samples
    assert from_file.labels_mapping() == from_tree.labels_mapping()
    x, y = next(iter(from_file.train_loader()))
    assert x.shape == (4, 3, 16, 16) and y.dtype.is_signed


def test_rows_without_a_split_are_split_stratified_and_seeded(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {"a": 10, "b": 5, "c": 1}, splits=())
    labels = write_labels(tmp_path / "labels.csv", tree_rows(tree, split=False))
    data = small_data(labels, val_fraction=0.2, seed=3)
    as_tree = small_data(tree, val_fraction=0.2, seed=3)  # the same rule as class folders
    assert data.class_counts["train"] == [8, 4, 1] and data.class_counts["val"] == [2, 1, 0]
    assert data.val_samples == as_tree.val_samples
    assert small_data(labels, val_fraction=0.2, seed=4).val_samples != data.val_samples


def test_jsonl_keys_paths_numeric_labels_and_mixed_splits(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "images", {"0": 4, "1": 4}, splits=())
    rows: list[dict[str, object]] = [
        {"image": str(p.resolve()) if i == 0 else str(p.relative_to(tmp_path)),
         "class_id": int(p.parent.name), "split": "validation" if i == 1 else None, "x": 1}
        for i, p in enumerate(sorted(tree.rglob("*.*")))
    ]  # fmt: skip
    labels = write_labels(tmp_path / "export.jsonl", rows)
    data = small_data(labels, image_key="image", label_key="class_id", val_fraction=0.25)
    assert data.classes == ["0", "1"]
    assert len(data.train_samples) + len(data.val_samples) == 8
    assert (tree / "0" / "1.jpg", 0) in data.val_samples  # the row that named its split
    assert all(p.is_file() for p, _ in data.train_samples)


BAD_CSV = [
    ("path,label\nimages/a/0.png,\n", ":2: empty label"),
    ("path,label\nimages/a/0.png,a,extra\n", ":2: 3 field"),
    ('path,label\n"images/a/0.png,a\n', ":2: malformed CSV"),
    ("file,label\nimages/a/0.png,a\n",
     ":1: no column 'path'; the header names 'file', 'label'.*--image-key COLUMN"),
    ("path,choice\nimages/a/0.png,a\n", ":1: no column 'label'.*--label-key COLUMN"),
    ("path,label,split\nimages/a/0.png,a,holdout\n", ":2: unknown split 'holdout'"),
    ("path,label\nimages/a/0.png,a\nimages/a/0.png,b\n", ":3: .* is listed again .*:2"),
    # The same label twice: refused all the same (it would be drawn twice as often).
    ("path,label\nimages/a/0.png,a\nimages/b/0.png,b\nimages/a/0.png,a\n",
     ":4: .* is listed again .*:2"),
    ("path,label\nimages/a/0.png,a\nimages/b/../a/0.png,b\n",
     ":3: .*b/../a/0.png is listed again \\(first at .*:2 as .*images/a/0.png\\)"),
    ("path,label\nimages/a/9.png,a\nimages/b/../a/9.png,b\n", ":3: .* is listed again .*:2"),
    ("path,label,path\nimages/a/0.png,a,images/b/0.png\n", ":1: .* column\\(s\\) 'path' more than once"),
    ("path,label,split\nimages/a/0.png,a,train\nimages/b/0.png,b,train\n"
     "images/a/1.png,zebra,val\n", ":4: label 'zebra' has no training row"),
    ("path,label\nimages/a/0.png,a\nimages/a/1.png,a\n", "1 label.*at least two"),
    ("path,label\n", "has no rows"),
    ("path,label,split\nimages/a/0.png,a,train\nimages/b/0.png,b,train\n", "has no val rows"),
]  # fmt: skip
BAD_JSONL = [
    ('{"path": "images/a/0.png", "label": " "}\n', ":1: empty label"),
    ('{"path": "images/a/0.png", "label": "a"}\n{"path": "images/a/1.png",\n', ":2: not valid JSON"),
    ('\n["images/a/0.png", "a"]\n', ":2: a JSON list, not an object"),
    ('{"image": "images/a/0.png", "label": "a"}\n', ":1: no key 'path'; the object has 'image', 'label'"),
    ('{"path": "images/a/0.png", "choice": "a"}\n', ":1: no key 'label'.*--label-key"),
    ('{"path": "images/a/0.png", "label": "a"}\n{"path": "images/b/0.png", "label": "b"}\n'
     '{"path": "images/a/0.png", "label": "a"}\n', ":3: .* is listed again .*:1"),
    ('{"path": "images/a/0.png", "label": {"a": 1}}\n', ":1: label .* is a dict"),
    ('{"path": "", "label": "a"}\n', ":1: empty or non-text image path"),
    ('{"path": "images/a/0.png", "label": ' + "9" * 5000 + "}\n", ":1: cannot be read as JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [("labels.csv", t, m) for t, m in BAD_CSV] + [("labels.jsonl", t, m) for t, m in BAD_JSONL],
)
def test_bad_rows_name_the_file_and_line(tmp_path: Path, name: str, text: str, match: str) -> None:
    make_tree(tmp_path / "images", {"a": 2, "b": 2}, splits=())
    labels = tmp_path / name
    labels.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=match) as info:
        small_data(labels)
    assert str(labels) in str(info.value)


def test_a_symlink_to_a_listed_image_is_the_same_image(tmp_path: Path) -> None:
    make_tree(tmp_path / "images", {"a": 2, "b": 2}, splits=())
    (tmp_path / "images" / "b" / "alias.png").symlink_to(tmp_path / "images" / "a" / "0.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nimages/a/0.png,a\nimages/b/alias.png,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":3: .*alias.png is listed again \(first at .*:2 as "):
        small_data(labels)


def test_a_fifo_listed_as_an_image_is_skipped_unopened(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {"a": 10, "b": 10}, splits=())
    os.mkfifo(tree / "a" / "x.png")
    labels = write_labels(tmp_path / "labels.csv", [*tree_rows(tree, split=False)])
    data = small_data(labels, max_bad_fraction=0.1, verify="none")  # this layer alone
    assert [(p.name, "not a regular file" in r) for p, r in data.bad_files] == [("x.png", True)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_missing_images_are_dropped_and_reported_or_an_error_past_the_limit(
    tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    tree = make_tree(tmp_path, {"a": 10, "b": 10}, splits=())
    rows = tree_rows(tree, split=False)
    rows.insert(3, {"path": "a/gone.png", "label": "a"})
    labels = write_labels(tmp_path / f"labels{suffix}", rows)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = small_data(labels, max_bad_fraction=0.1, verify="none")  # this layer alone
    assert f"labels{suffix}:{5 if suffix == '.csv' else 4}" in caplog.text
    assert sum(map(len, data.class_counts.values())) and len(data.bad_files) == 1
    report = data.report()["bad_files"]
    assert report[0]["path"] == str(tmp_path / "a" / "gone.png")
    assert "file not found" in report[0]["reason"] and f"labels{suffix}:" in report[0]["reason"]
    with pytest.raises(DataError, match=rf"1 of the 21 images .*labels\{suffix}:\d+: .*gone.png"):
        small_data(labels, max_bad_fraction=0.01)


def test_unreadable_images_follow_the_folder_rules(tmp_path: Path) -> None:
    tree = make_tree(tmp_path, {"a": 10, "b": 10}, splits=())
    (tree / "a" / "0.png").write_bytes(b"not an image")
    labels = write_labels(tmp_path / "labels.csv", tree_rows(tree, split=False))
    data = small_data(labels)
    assert [p for p, _ in data.bad_files] == [tree / "a" / "0.png"]
    assert all(p != tree / "a" / "0.png" for p, _ in data.train_samples + data.val_samples)


def test_missing_and_unreadable_images_count_together(tmp_path: Path) -> None:
    """One missing and one unreadable image of 21 listed: each is under 8%, together over."""
    tree = make_tree(tmp_path, {"a": 10, "b": 10}, splits=())
    (tree / "a" / "0.png").write_bytes(b"not an image")
    rows = tree_rows(tree, split=False)
    rows.insert(3, {"path": "a/gone.png", "label": "a"})
    labels = write_labels(tmp_path / "labels.csv", rows)
    assert len(small_data(labels, max_bad_fraction=0.1).bad_files) == 2
    with pytest.raises(DataError, match=r"2 of 21 images .*gone\.png.*0\.png"):
        small_data(labels, max_bad_fraction=0.08)


def test_data_path_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"Label file .*nope\.csv does not exist"):
        small_data(tmp_path / "nope.csv")
    other = tmp_path / "labels.txt"
    other.write_text("path,label\n")
    with pytest.raises(DataError, match=r"labels\.txt is a file.*\.csv or \.jsonl"):
        small_data(other)


def test_label_file_and_images_are_only_read(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", {"a": 3, "b": 3}, splits=())
    labels = write_labels(tmp_path / "tree" / "labels.csv", tree_rows(tree, split=False))
    before = tree_digest(tmp_path, mtimes=True)
    small_data(labels, cache="ram")
    assert tree_digest(tmp_path, mtimes=True) == before


def test_read_label_file_returns_plain_data(tmp_path: Path) -> None:
    make_tree(tmp_path / "x", {"a": 1, "b": 1}, splits=())
    shutil.copy(tmp_path / "x" / "a" / "0.png", tmp_path / "x" / "b" / "9.png")
    labels = write_labels(
        tmp_path / "l.csv",
        [{"path": "x/a/0.png", "label": "a", "split": "train"},
         {"path": "x/b/0.png", "label": "b", "split": "TRAIN"},
         {"path": "x/b/9.png", "label": "b", "split": "valid"}],
    )  # fmt: skip
    scan, missing = read_label_file(labels, val_fraction=0.2, seed=0)
    assert missing == [] and scan.classes == ["a", "b"]
    assert scan.train == [(tmp_path / "x/a/0.png", 0), (tmp_path / "x/b/0.png", 1)]
    assert scan.val == [(tmp_path / "x/b/9.png", 1)] and scan.test == []
