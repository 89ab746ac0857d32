"""Verification and the RAM cache: unreadable files skipped or refused, cache budget."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.trainer.data.conftest import small_data
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


def test_ram_cache_gives_the_same_val_batches(tiny_tree: Path) -> None:
    disk = small_data(tiny_tree, img_size=8)
    ram = small_data(tiny_tree, img_size=8, cache="ram")
    assert ram.cached and not disk.cached
    for (a, ta), (b, tb) in zip(disk.val_loader(), ram.val_loader(), strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    assert next(iter(ram.train_loader()))[0].shape == (4, 3, 8, 8)


def test_ram_cache_over_budget_falls_back_to_disk(tiny_tree: Path) -> None:
    with pytest.warns(UserWarning, match="cache_max_bytes"):
        data = small_data(tiny_tree, cache="ram", cache_max_bytes=1000)
    assert not data.cached
    assert next(iter(data.val_loader()))[0].shape == (4, 3, 16, 16)
