"""--check-leakage: the same image in two splits, byte for byte or resized and re-encoded."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from tests.trainer.data.test_labelfile import tree_rows, write_labels
from trainer.data import leakage, preflight
from trainer.data.demo import draw_shape
from trainer.data.leakage import NEAR_DISTANCE, find_leaks, find_near_duplicates
from trainer.data.phash import phash


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


def picture(seed: int) -> Image.Image:
    """A 64 px drawn shape on a gradient, as the demo set draws them: a picture with structure."""
    return draw_shape(("star", "ring", "cross")[seed % 3], np.random.default_rng(seed))


def near_tree(root: Path) -> Path:
    """A train/val/test tree whose val pictures are hidden in train resized (PNG) and
    re-encoded (JPEG), one also byte for byte; plus a resized copy within train (no leak)."""
    for split, seeds in (("train", (10, 11, 12)), ("val", (20, 21, 22)), ("test", (30,))):
        for s in seeds:
            (root / split / "ab"[s % 2]).mkdir(parents=True, exist_ok=True)
            picture(s).save(root / split / "ab"[s % 2] / f"{s}.png")
    val = Image.open(root / "val/a/20.png")
    val.resize((40, 40), Image.Resampling.BICUBIC).save(root / "train/a/resized.png")
    Image.open(root / "val/b/21.png").save(root / "train/a/reencoded.jpg", quality=60)
    shutil.copy(root / "val/a/22.png", root / "train/a/same.png")
    Image.open(root / "train/a/10.png").resize((48, 48)).save(root / "train/a/10_small.png")
    return root


def test_near_duplicates_across_splits_are_found_with_their_distance(tmp_path: Path) -> None:
    root = near_tree(tmp_path / "t")
    data = small_data(root, check_leakage=True, check_cache_dir=tmp_path / "cache")
    pairs = {(q["files"][0]["path"], q["files"][1]["path"]): q for q in data.near_duplicates or []}
    assert set(pairs) == {
        (str(root / "train/a/resized.png"), str(root / "val/a/20.png")),
        (str(root / "train/a/reencoded.jpg"), str(root / "val/b/21.png")),
    }  # the byte-identical pair is under "leakage" only; the pair within train is no leak
    assert all(0 <= q["distance"] <= NEAR_DISTANCE for q in pairs.values())
    assert [g["files"][0]["path"] for g in data.leaks or []] == [str(root / "train/a/same.png")]
    assert data.report()["near_duplicates"] == data.near_duplicates
    assert "2 near-duplicate pair(s)" in data.summary()


def test_hashes_are_cached_and_not_computed_without_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = near_tree(tmp_path / "t")
    calls: list[str] = []

    def counting(path: str) -> int:
        calls.append(path)
        return phash(path)

    monkeypatch.setattr(preflight, "perceptual_hash", counting)
    monkeypatch.setattr(leakage, "phash", counting)
    cache = tmp_path / "cache"
    small_data(root, check_cache_dir=cache)  # no --check-leakage: nothing hashed
    assert calls == []
    # The cache written without hashes is read, and the hashes are added to it.
    first = small_data(root, check_leakage=True, check_cache_dir=cache).near_duplicates
    assert len(calls) == 11 and len(first or []) == 2
    calls.clear()
    again = small_data(root, check_leakage=True, check_cache_dir=cache).near_duplicates
    assert calls == [] and again == first  # a warm start hashes nothing
    # Without a start-up check, the leakage check hashes the files itself.
    assert small_data(root, check_leakage=True, verify="none").near_duplicates == first


def test_a_cache_with_inconsistent_hash_arrays_is_a_miss(tmp_path: Path) -> None:
    root = near_tree(tmp_path / "t")
    paths = [str(p) for p in sorted(root.rglob("*.*"))]
    key = dict(cache_key="k", cache_dir=tmp_path / "c")
    assert preflight.preflight(paths, phash=True, **key).phashes is not None  # type: ignore[arg-type]
    [where] = (tmp_path / "c").iterdir()
    with np.load(where) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(where, **{**arrays, "hashed": arrays["hashed"][:-1]})  # one short
    result = preflight.preflight(paths, phash=True, **key)  # type: ignore[arg-type]
    assert result.checked == len(paths) and len(result.phashes or {}) == len(paths)


def test_near_duplicate_search_compares_every_split_pair(tmp_path: Path) -> None:
    files = {}
    for name, seed in (("a", 1), ("b", 2)):
        files[name] = tmp_path / f"{name}.png"
        picture(seed).save(files[name])
    picture(1).resize((50, 50)).save(tmp_path / "a_small.png")
    splits = {"train": [(files["b"], 0)], "val": [(files["a"], 0)],
              "test": [(tmp_path / "a_small.png", 0)]}  # fmt: skip
    pairs = find_near_duplicates(splits)
    assert [[f["split"] for f in q["files"]] for q in pairs] == [["val", "test"]]


def test_look_alikes_sharing_a_hash_are_not_pairs(tmp_path: Path) -> None:
    # One disc at one place in two colourings: the grayscale hash can hardly tell them apart
    # (as the demo set's circles), the colour descriptor does.
    for name, fg, bg in (("a", (255, 90, 90), (0, 0, 90)), ("b", (90, 255, 255), (40, 40, 40))):
        im = Image.new("RGB", (64, 64), bg)
        ImageDraw.Draw(im).ellipse((14, 12, 50, 48), fill=fg)
        im.save(tmp_path / f"{name}.png")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert bin(phash(a) ^ phash(b)).count("1") <= NEAR_DISTANCE
    assert find_near_duplicates({"train": [(a, 0)], "val": [(b, 0)]}) == []
