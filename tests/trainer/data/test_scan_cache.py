"""The stored tree scan: reused while the tree is unchanged, walked again when it is not."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from trainer.data import scan_cache
from trainer.data.samples import SampleArray
from trainer.data.scan import scan_tree


def _age(root: Path, seconds: float = 60.0) -> None:
    """Date every folder and file under ``root`` back, as a tree copied a while ago is."""
    then = time.time() - seconds
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.utime(os.path.join(dirpath, name), (then, then))
        os.utime(dirpath, (then, then))


def _scan(root: Path, cache: Path, **kw: Any) -> Any:
    return scan_cache.cached_scan(root, val_fraction=kw.get("val_fraction", 0.2),
                                  seed=kw.get("seed", 0), cache_dir=cache)  # fmt: skip


@pytest.fixture
def no_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the tree is walked: the scan must come from the cache."""

    def walked(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the tree was walked")

    monkeypatch.setattr(scan_cache, "scan_tree", walked)


def _aged_tree(tmp_path: Path) -> Path:
    tree = make_tree(tmp_path / "tree", splits=("train", "val", "test"))
    _age(tree)
    return tree


def test_an_unchanged_tree_is_read_back_as_it_was_scanned(tmp_path: Path) -> None:
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    first = _scan(tree, cache)
    fresh = scan_tree(tree, val_fraction=0.2, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_cache, "scan_tree", None)  # any walk would fail
        again = _scan(tree, cache)
    for scan in (first, again):
        assert scan.classes == fresh.classes
        for split in ("train", "val", "test"):
            samples = getattr(scan, split)
            assert isinstance(samples, SampleArray)
            assert samples == getattr(fresh, split) and len(samples) > 0
    assert again.folders == first.folders


def _png(path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)


def test_an_added_image_is_seen(tmp_path: Path) -> None:
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    before = len(_scan(tree, cache).train)
    _png(tree / "train" / "cat" / "new.png")
    scan = _scan(tree, cache)
    assert len(scan.train) == before + 1
    assert (tree / "train" / "cat" / "new.png", scan.classes.index("cat")) in scan.train


def test_an_image_added_in_a_subfolder_is_seen(tmp_path: Path) -> None:
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    (tree / "val" / "dog" / "more").mkdir()
    _age(tree)
    before = len(_scan(tree, cache).val)
    _png(tree / "val" / "dog" / "more" / "x.png")
    assert len(_scan(tree, cache).val) == before + 1


def test_a_removed_image_is_seen(tmp_path: Path) -> None:
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    gone = tree / "val" / "dog" / "0.png"
    assert (gone, 2) in _scan(tree, cache).val
    gone.unlink()
    assert gone not in [p for p, _ in _scan(tree, cache).val]


def test_a_new_class_folder_is_seen(tmp_path: Path) -> None:
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    assert _scan(tree, cache).classes == ["bird", "cat", "dog"]
    for split in ("train", "val"):
        (tree / split / "eel").mkdir()
        _png(tree / split / "eel" / "0.png")
    assert _scan(tree, cache).classes == ["bird", "cat", "dog", "eel"]


def test_a_class_folder_replaced_under_the_same_mtime_is_seen(tmp_path: Path) -> None:
    # Another folder moved in under the old name, dated as the old one, its parent's mtime put
    # back too: only the inode tells them apart.
    tree = _aged_tree(tmp_path)
    old, parent = tree / "train" / "cat", tree / "train"
    old_st, parent_st = old.stat(), parent.stat()
    assert {p for p, _ in small_data(tree).train_samples} >= set(old.iterdir())
    new = tmp_path / "staging" / "cat"
    new.mkdir(parents=True)
    for f in old.iterdir():  # as many files, other names
        (new / f"new_{f.name}").write_bytes(f.read_bytes())
    old.rename(tmp_path / "old_cat")  # kept: its inode cannot be reused for the new folder
    new.rename(old)
    _age(old)
    os.utime(old, ns=(old_st.st_atime_ns, old_st.st_mtime_ns))
    os.utime(parent, ns=(parent_st.st_atime_ns, parent_st.st_mtime_ns))
    assert old.stat().st_mtime_ns == old_st.st_mtime_ns and old.stat().st_ino != old_st.st_ino
    # A stale scan lists the old names, which are gone: a DataError, or a wrong list here.
    cats = [p for p, _ in small_data(tree).train_samples if p.parent == old]
    assert sorted(cats) == sorted(old.iterdir()) and all(p.name.startswith("new_") for p in cats)


def test_a_file_changed_in_place_is_skipped_by_the_loader(tmp_path: Path, no_walk: None) -> None:
    # Rewriting a file changes no folder, so the stored scan stands, and so does the check's
    # verdict (no stat of each file: trainer.data.preflight). The loader, which reads the
    # file, skips it: named and counted, as the start-up check would have left it out.
    tree = _aged_tree(tmp_path)
    cache = Path(os.environ["IMGTRAINER_CHECK_CACHE"])  # where ImageFolderData keeps both
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_cache, "scan_tree", scan_tree)
        first = small_data(tree)  # walks the tree, stores the scan and the checks
    assert first.bad_files == [] and list(cache.glob("*.scan.npz"))
    changed = tree / "train" / "cat" / "0.png"
    folder_mtime = changed.parent.stat().st_mtime_ns
    changed.write_bytes(b"not an image any more")
    assert changed.parent.stat().st_mtime_ns == folder_mtime  # the folder did not change
    data = small_data(tree, max_bad_fraction=0.5)  # no_walk: from the stored scan
    assert data.bad_files == []
    images = sum(len(t) for _, t in data.train_loader())
    assert images == len(data.train_samples) - 1
    assert list(data.bad_images.skipped) == [str(changed)]


def test_an_update_extracted_with_normalised_mtimes_is_seen(tmp_path: Path) -> None:
    # A reproducible archive (tar --mtime=...) extracted over the old copy adds a class and
    # an image, and leaves every folder's mtime (and inode) as it was.
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    assert _scan(tree, cache).classes == ["bird", "cat", "dog"]
    folders = [Path(d) for d, _, _ in os.walk(tree)]
    before = {d: (d.stat().st_atime_ns, d.stat().st_mtime_ns, d.stat().st_ino) for d in folders}
    for split in ("train", "val"):
        (tree / split / "eel").mkdir()
        _png(tree / split / "eel" / "0.png")
    _png(tree / "train" / "cat" / "new.png")
    for d, (atime, mtime, _) in before.items():
        os.utime(d, ns=(atime, mtime))
    assert {d: (d.stat().st_mtime_ns, d.stat().st_ino) for d in folders} == {
        d: (m, i) for d, (_, m, i) in before.items()
    }
    scan = _scan(tree, cache)
    assert scan.classes == ["bird", "cat", "dog", "eel"]
    assert (tree / "train" / "cat" / "new.png", 1) in scan.train


def test_a_symlinked_folder_pointed_elsewhere_under_the_same_names_is_seen(
    tmp_path: Path,
) -> None:
    # train/cat/more links to a folder of extra cat images named as dog's are (0.png, ...);
    # re-pointed at train/dog, the listing through the link is the same names: only the
    # link's target tells the change, and dog's images must not become cats.
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    dog = tree / "train" / "dog"
    extra = tmp_path / "extra"
    extra.mkdir()
    for image in dog.iterdir():
        _png(extra / image.name)
    link = tree / "train" / "cat" / "more"
    link.symlink_to(extra, target_is_directory=True)
    before = _scan(tree, cache)
    assert any("/cat/more/" in str(p) for p, _ in before.train)
    link.unlink()
    link.symlink_to(dog, target_is_directory=True)
    after = _scan(tree, cache)
    assert not any("/cat/more/" in str(p) for p, _ in after.train)
    assert [p for p, _ in after.skipped_links] == [link]


def test_a_change_made_while_the_tree_is_scanned_is_seen_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What is stored is what the walk read: an image added after the walk read its folder,
    # before the scan was stored, makes the stored scan stale at once, whatever the clock.
    tree, cache = make_tree(tmp_path / "tree"), tmp_path / "cache"
    late = tree / "train" / "cat" / "late.png"

    def scan_then_add(*args: Any, **kwargs: Any) -> Any:
        scan = scan_tree(*args, **kwargs)
        _png(late)
        return scan

    monkeypatch.setattr(scan_cache, "scan_tree", scan_then_add)
    assert late not in [p for p, _ in _scan(tree, cache).train]
    monkeypatch.setattr(scan_cache, "scan_tree", scan_tree)
    assert late in [p for p, _ in _scan(tree, cache).train]


def test_a_tree_written_just_now_is_stored_and_read_back(tmp_path: Path, no_walk: None) -> None:
    # No clock is trusted, so no waiting period either: the listings tell any change.
    tree, cache = make_tree(tmp_path / "tree"), tmp_path / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan_cache, "scan_tree", scan_tree)
        first = _scan(tree, cache)
    assert _scan(tree, cache).train == first.train  # no_walk: read back


def test_a_tree_split_by_seed_is_stored_per_seed_and_fraction(tmp_path: Path) -> None:
    tree, cache = make_tree(tmp_path / "tree", {"a": 10, "b": 10}, splits=()), tmp_path / "c"
    _age(tree)
    scans = [_scan(tree, cache, seed=s, val_fraction=f) for s, f in ((0, 0.2), (1, 0.2), (0, 0.5))]
    again = [_scan(tree, cache, seed=s, val_fraction=f) for s, f in ((0, 0.2), (1, 0.2), (0, 0.5))]
    assert [s.val for s in again] == [s.val for s in scans]
    assert scans[0].val != scans[1].val and len(scans[2].val) == 10
    assert len(list(cache.glob("*.scan.npz"))) == 3


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    return buf.getvalue()


@pytest.mark.parametrize(
    "content", [b"", b"PK\x03\x04 truncated", b"not a zip at all", _npy()]
)
def test_a_damaged_cache_file_means_a_fresh_scan(tmp_path: Path, content: bytes) -> None:
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    expected = _scan(tree, cache)
    (stored,) = cache.glob("*.scan.npz")
    stored.write_bytes(content)
    assert _scan(tree, cache).train == expected.train


def _crafted(z: dict[str, Any], meta: dict[str, Any], how: str) -> None:
    """Damage a stored scan's arrays or metadata (in place) as ``how`` says."""
    n = len(z["train_targets"])
    if how == "target out of range":
        z["train_targets"] = np.full(n, 7, np.int64)
    elif how == "offsets past the blob":
        z["train_offsets"] = z["train_offsets"] * 1000
    elif how == "offsets not rising":
        z["val_offsets"] = z["val_offsets"][::-1].copy()
    elif how == "an array of another dtype":
        z["test_targets"] = z["test_targets"].astype(np.float64)
    elif how == "an array of another shape":
        z["train_targets"] = z["train_targets"].reshape(1, -1)
    elif how == "an array missing":
        del z["val_blob"]
    elif how == "classes not strings":
        meta["classes"] = [1, 2, 3]
    elif how == "metadata not an object":
        meta.clear()
    elif how == "listings cut short":
        meta["listings"] = meta["listings"][:1]
    elif how == "log lines malformed":
        meta["log"] = [["INFO", 3]]


CRAFTS = ["target out of range", "offsets past the blob", "offsets not rising",
          "an array of another dtype", "an array of another shape", "an array missing",
          "classes not strings", "metadata not an object", "listings cut short",
          "log lines malformed", "compressed", "another version"]  # fmt: skip


@pytest.mark.parametrize("how", CRAFTS)
def test_a_crafted_cache_file_means_a_fresh_scan(
    tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree, cache = _aged_tree(tmp_path), tmp_path / "cache"
    expected = _scan(tree, cache)
    (stored,) = cache.glob("*.scan.npz")
    with np.load(stored) as f:
        z = {k: f[k] for k in f.files}
    header = json.loads(z.pop("header").tobytes())
    _crafted(z, header["meta"], how)
    if how == "another version":
        header["version"] += 1
    z["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    (np.savez_compressed if how == "compressed" else np.savez)(buf, **z)
    stored.write_bytes(buf.getvalue())
    with zipfile.ZipFile(stored) as check:  # the crafted file is a well-formed archive
        assert check.testzip() is None
    walks = []
    monkeypatch.setattr(scan_cache, "scan_tree", lambda *a, **k: walks.append(1) or scan_tree(*a, **k))
    scan = _scan(tree, cache)  # no exception: a fresh scan
    assert walks == [1]
    assert scan.classes == expected.classes
    for split in ("train", "val", "test"):
        assert getattr(scan, split) == getattr(expected, split)
