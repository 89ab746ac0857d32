"""Verification and the RAM cache: unreadable files skipped or refused, cache budget."""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from tests.trainer.data.malformed import damage, good_bytes
from trainer.data import cache
from trainer.data.decode import load_image
from trainer.errors import DataError


def test_bad_files_are_skipped_with_a_warning(
    tiny_tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tiny_tree / "train" / "cat" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = small_data(tiny_tree, max_bad_fraction=0.1)
    assert [p for p, _ in data.bad_files] == [broken]
    assert broken not in {p for p, _ in data.train_samples}
    assert data.class_counts["train"] == [4, 6, 5]
    assert "broken.jpg" in caplog.text


def test_too_many_bad_files_is_an_error(tiny_tree: Path) -> None:
    for i in range(3):
        (tiny_tree / "val" / "dog" / f"bad{i}.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="max-bad-fraction") as info:
        small_data(tiny_tree, max_bad_fraction=0.05)
    assert "bad0.png" in str(info.value)


def test_truncated_jpeg_is_skipped(tiny_tree: Path) -> None:
    src = tiny_tree / "train" / "cat" / "1.jpg"
    whole = src.read_bytes()
    cut = tiny_tree / "train" / "cat" / "truncated.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    data = small_data(tiny_tree, max_bad_fraction=0.2)
    assert [p.name for p, _ in data.bad_files] == ["truncated.jpg"]
    assert src.read_bytes() == whole


@pytest.mark.parametrize("crop_pct", [0.875, 0.6])  # resize to 9, 13: pre-resized to that
def test_ram_cache_gives_the_same_val_batches(tiny_tree: Path, crop_pct: float) -> None:
    disk = small_data(tiny_tree, img_size=8, crop_pct=crop_pct)
    ram = small_data(tiny_tree, img_size=8, cache="ram", crop_pct=crop_pct)
    assert ram.cached and not disk.cached
    for (a, ta), (b, tb) in zip(disk.val_loader(), ram.val_loader(), strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert next(iter(ram.train_loader()))[0].shape == (4, 3, 8, 8)


def test_ram_cache_over_budget_falls_back_to_disk(tiny_tree: Path) -> None:
    with pytest.warns(UserWarning, match="cache_max_bytes"):
        data = small_data(tiny_tree, cache="ram", cache_max_bytes=1000)
    assert not data.cached
    assert next(iter(data.val_loader()))[0].shape == (4, 3, 16, 16)


def _undecodable(path: Path, seed: int = 0) -> Path:
    """A PNG whose header passes the start-up check and whose pixel data is corrupt."""
    path.write_bytes(damage("png", "corrupt_data", good_bytes("png", seed=seed)))
    return path


@pytest.mark.parametrize("verify", ["header", "none"])
def test_an_unreadable_image_is_left_out_of_the_cache_and_reported(
    tiny_tree: Path, tmp_path: Path, verify: str
) -> None:
    bad = _undecodable(tiny_tree / "val" / "dog" / "2b.png")  # in the middle of val
    ram = small_data(tiny_tree, img_size=8, cache="ram", verify=verify, max_bad_fraction=0.1)
    assert ram.cached and [p for p, _ in ram.bad_files] == [bad]
    assert bad not in {p for p, _ in ram.val_samples}
    ram.write_report(tmp_path / "data_report.json")
    report = json.loads((tmp_path / "data_report.json").read_text())
    assert [f["path"] for f in report["bad_files"]] == [str(bad)]
    # The cached images stay aligned with their samples: the same pixels as from disk.
    disk = small_data(tiny_tree, img_size=8, verify=verify, max_bad_fraction=0.1)
    from_disk = torch.cat([x for x, _ in disk.val_loader()])
    from_ram = torch.cat([x for x, _ in ram.val_loader()])
    assert torch.equal(from_disk, from_ram) and len(from_ram) == 15


def test_cache_rejects_count_with_the_start_up_checks_against_the_limit(tiny_tree: Path) -> None:
    (tiny_tree / "train" / "cat" / "zz.png").write_bytes(b"not an image")  # the check's
    _undecodable(tiny_tree / "val" / "cat" / "zz.png")  # the cache's
    # Each is 1 of 32 images (3.1%), under 5%; together 6.2%, over it.
    small_data(tiny_tree, max_bad_fraction=0.05)
    with pytest.raises(DataError, match="2 of 32 images") as info:
        small_data(tiny_tree, cache="ram", max_bad_fraction=0.05)
    assert "zz.png" in str(info.value) and "--max-bad-fraction" in str(info.value)


def _two_class_splits(root: Path, n: int) -> dict[str, list[tuple[Path, int]]]:
    make_tree(root, {"a": n // 2, "b": n // 2}, size=(8, 8), splits=())
    samples = sorted((p, int(p.parent.name == "b")) for p in root.rglob("*.*"))
    return {"train": samples[: n // 2], "val": samples[n // 2 :], "test": []}


def test_the_cache_decodes_in_a_bounded_window_of_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = _two_class_splits(tmp_path / "t", 200)
    stats = {"submitted": 0, "consumed": 0, "peak": 0}

    class Spy(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            future = super().submit(fn, *args, **kwargs)
            stats["submitted"] += 1
            stats["peak"] = max(stats["peak"], stats["submitted"] - stats["consumed"])
            real = future.result

            def result(timeout: float | None = None) -> Any:
                stats["consumed"] += 1
                return real(timeout)

            future.result = result  # type: ignore[method-assign]
            return future

    monkeypatch.setattr(cache, "ThreadPoolExecutor", Spy)
    out = cache.verify_and_cache(
        splits, root=tmp_path, img_size=8, keep=True, cache_max_bytes=1 << 30,
        max_bad_fraction=0.0, workers=2,
    )  # fmt: skip
    assert out.images is not None and [len(v) for v in out.images.values()] == [100, 100, 0]
    assert stats["submitted"] == math.ceil(200 / cache.CHUNK) < 20  # per chunk, not per image
    assert stats["peak"] <= 2 * 2  # two chunks per thread in flight, at most


def test_decoding_stops_once_the_cache_cannot_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = _two_class_splits(tmp_path / "t", 200)
    calls = []
    monkeypatch.setattr(cache, "load_image", lambda p, **kw: calls.append(p) or load_image(p))
    with pytest.warns(UserWarning, match="cache_max_bytes"):
        out = cache.verify_and_cache(
            splits, root=tmp_path, img_size=8, keep=True, cache_max_bytes=1000,
            max_bad_fraction=0.0, workers=1,
        )  # fmt: skip
    assert out.images is None and out.samples == splits  # every sample kept, read from disk
    assert len(calls) == 2 * cache.CHUNK  # the chunks in flight when it overflowed, no more
