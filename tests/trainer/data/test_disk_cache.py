"""--cache disk (trainer/data/disk_cache.py): resized JPEG copies, made once, read after.

Tiny trees: images of 48x40 trained at 16 px, whose copies (short side 29 at crop scale 0.3,
18 for validation) are smaller than the originals, so every image gets one.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_tree, tree_digest
from tests.tools.test_resume import MovedStream, SigintAfter, argv, assert_same_run, with_hook
from tools import train
from trainer.config import TrainConfig
from trainer.data import ImageFolderData
from trainer.data.disk_cache import ORIGINAL, DiskCache, default_short_side
from trainer.data.gpu_decode import collate_encoded, decode_batch
from trainer.errors import ConfigError

SIZE = (48, 40)
SIDE = default_short_side(16, 0.3)  # 29


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree", {"a": 3, "b": 3}, size=SIZE)


def make_data(tree: Path, cache_dir: Path | None, **kw: Any) -> ImageFolderData:
    kw = {"img_size": 16, "batch_size": 4, "workers": 0, "crop_scale": 0.3, **kw}
    if cache_dir is None:
        return ImageFolderData(tree, **kw)
    return ImageFolderData(tree, cache="disk", disk_cache_dir=cache_dir, **kw)


def draws(data: ImageFolderData, split: str = "train") -> list[torch.Tensor]:
    """Every image of ``split`` as its loader serves it, under fixed seeds for training."""
    if split == "train":
        ds = data.train_dataset()
        return [ds[(i, 100 + i)][0] for i in range(len(ds))]
    ds = data.val_dataset()
    return [ds[i][0] for i in range(len(ds))]


def copies(folder: Path) -> list[Path]:
    return [p for p in entries(folder) if p.read_bytes() != ORIGINAL]


def entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.jpg"))


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def count_makes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    made: list[str] = []
    real = DiskCache._make

    def spy(self: DiskCache, path: str) -> bytes | None:
        made.append(path)
        return real(self, path)

    monkeypatch.setattr(DiskCache, "_make", spy)
    return made


def test_default_short_side_follows_img_size_and_crop_scale() -> None:
    assert default_short_side(224, 0.08) == 512  # 792, capped at twice val's 256
    assert default_short_side(224, 0.25) == 448
    assert default_short_side(224, 1.0) == 256  # never under val's resize size
    assert SIDE == 29


def test_copies_are_made_once_and_later_reads_see_the_same_pixels(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)
    Image.fromarray(small).save(tree / "train" / "b" / "small.jpg")  # smaller than a copy
    before = tree_digest(tree, mtimes=True)
    made = count_makes(monkeypatch)
    folder = tmp_path / "cache"
    data = make_data(tree, folder)
    first, first_val = draws(data), draws(data, "val")
    assert len(made) == 13 and len(copies(folder)) == 12  # 6 train + 6 val
    assert len(entries(folder)) == 13  # small: a marker, read as it is
    sides = sorted({min(Image.open(p).size) for p in copies(folder)})
    assert sides == [18, SIDE]  # val's resize size, the training side
    paths = [data.train_samples.path(i) for i in range(len(data.train_samples))]
    i = paths.index(str(tree / "train" / "b" / "small.jpg"))
    assert torch.equal(first[i], draws(make_data(tree, None))[i])  # read as it is
    made.clear()
    again = make_data(tree, folder)  # a later epoch, or a later run
    assert same(draws(again), first) and same(draws(again, "val"), first_val)
    assert made == []  # from the copies, and the marker
    assert tree_digest(tree, mtimes=True) == before  # the user's data is only read
    # Validation from a copy at its resize size is validation of the original, up to the
    # copy's JPEG loss (the resize leaves the copy as it is): under 4 levels on these images
    # of pure noise, JPEG's worst case.
    plain = draws(make_data(tree, None), "val")
    diff = [
        (a.float() - b.float()).abs().mean().item() for a, b in zip(first_val, plain, strict=True)
    ]
    assert max(diff) < 6


def test_a_changed_file_gets_a_new_copy(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An uncompressed BMP: new pixels keep the file's size.
    path = tree / "train" / "a" / "0.bmp"
    Image.fromarray(np.full((SIZE[1], SIZE[0], 3), 50, np.uint8)).save(path)
    folder = tmp_path / "cache"
    data = make_data(tree, folder)
    index = [data.train_samples.path(i) for i in range(len(data.train_samples))].index(str(path))
    first = draws(data)
    st = os.stat(path)
    # Rewritten in place, the old mtime put back (as cp -p or rsync -t do): same size and
    # mtime, only the ctime tells the versions apart.
    with open(path, "r+b") as f:
        f.seek(st.st_size - 3 * SIZE[0] * SIZE[1])
        f.write(bytes([200]) * 3 * SIZE[0] * SIZE[1])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    made = count_makes(monkeypatch)
    after = draws(make_data(tree, folder))
    assert made == [str(path)]
    assert after[index].float().mean() > 150 > first[index].float().mean()  # the new content
    assert same(after[:index] + after[index + 1 :], first[:index] + first[index + 1 :])


# Empty (a crash before the data reached the disk), garbage, and cut in its pixel data: read
# after its header, so after the crop box was drawn.
@pytest.mark.parametrize("damage", [b"", b"\xff\xd8\xff\xe0 not a jpeg", "cut"])
def test_a_damaged_copy_is_made_again_with_the_same_draws(
    tree: Path, tmp_path: Path, damage: bytes | str
) -> None:
    folder = tmp_path / "cache"
    first = draws(make_data(tree, folder))
    for p in copies(folder):
        good = p.read_bytes()
        p.write_bytes(good[: len(good) * 9 // 10] if damage == "cut" else damage)
    assert same(draws(make_data(tree, folder)), first)
    assert all(Image.open(p).load() is not None for p in copies(folder))  # made again


def test_an_unwritable_folder_warns_once_and_reads_the_originals(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, "trainer.data"), warnings.catch_warnings():
        warnings.simplefilter("error")  # a log record, not also a warning: said once
        data = make_data(tree, blocker / "cache")  # a folder under a file: cannot be made
    assert caplog.text.count("cannot write its folder") == 1
    assert same(draws(data), draws(make_data(tree, None)))


def test_a_failing_write_turns_the_cache_off_with_one_warning(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    plain = draws(make_data(tree, None))
    data = make_data(tree, tmp_path / "cache")
    monkeypatch.setattr(os, "replace", full)
    with caplog.at_level(logging.WARNING, "trainer.data"):
        got = draws(data)
    assert "Disk cache off" in caplog.text and "No space left" in caplog.text
    assert len(caplog.records) == 1
    assert copies(tmp_path / "cache") == [] and not list((tmp_path / "cache").rglob("*.tmp"))
    # The image being stored is served from its copy; the next ones from the originals.
    assert same(got[1:], plain[1:])


def test_the_size_limit_warns_at_start_and_once_when_reached(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one_copy = 1.5e-6  # GiB: about 1.6 KB, room for one copy of these images
    with caplog.at_level(logging.WARNING, "trainer.data"):
        data = make_data(tree, tmp_path / "cache", cache_disk_max_gb=one_copy)
    assert caplog.text.count("may need up to") == 1 and "--cache-disk-max-gb 1.5e-06," in caplog.text
    caplog.clear()
    plain = draws(make_data(tree, None))
    with caplog.at_level(logging.WARNING, "trainer.data"):
        got = draws(data)
    assert len(copies(tmp_path / "cache")) == 1
    assert caplog.text.count("reached its limit") == 1
    # The copy that did not fit is served as made; the images after it from the originals.
    assert same(got[2:], plain[2:])


def test_workers_write_the_copies_and_a_later_run_reads_the_same(
    tree: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "cache"
    data = make_data(tree, folder, workers=2)
    try:
        loader = data.train_loader()
        data.sampler.set_epoch(0)
        with_workers = [b[0] for b in loader]
    finally:
        data.close()
    assert len(copies(folder)) == 6 and not list(folder.rglob("*.tmp"))
    again = make_data(tree, folder)  # no workers, every image from its copy
    again.sampler.set_epoch(0)
    assert same([b[0] for b in again.train_loader()], with_workers)


def test_bad_files_are_skipped_as_without_the_cache(tree: Path, tmp_path: Path) -> None:
    bad = tree / "train" / "a" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    data = make_data(tree, tmp_path / "cache", verify="none", max_bad_fraction=0.5)
    data.sampler.set_epoch(0)
    images = sum(len(b[1]) for b in data.train_loader())
    assert images == 6 and list(data.bad_images.skipped) == [str(bad)]
    assert len(copies(tmp_path / "cache")) == 6


def test_resume_with_the_cache_equals_the_straight_run(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The straight run fills a cold cache; the interrupted one reads it warm; the resume
    starts on a cold one again: the same run, bitwise."""
    extra = ["--cache", "disk"]
    monkeypatch.setenv("IMGTRAINER_IMAGE_CACHE", str(tmp_path / "c1"))
    assert train.main(argv(tree, tmp_path / "straight", 0, extra)) == 0
    real = train.default_hooks
    try:
        train.default_hooks = with_hook(real, lambda: SigintAfter(2))
        assert train.main(argv(tree, tmp_path / "resumed", 0, extra)) == 128 + signal.SIGINT
        monkeypatch.setenv("IMGTRAINER_IMAGE_CACHE", str(tmp_path / "c2"))
        train.default_hooks = with_hook(real, MovedStream)
        assert train.main(["--resume", str(tmp_path / "resumed")]) == 0
    finally:
        train.default_hooks = real
    assert copies(tmp_path / "c2")  # the resumed epochs made copies again
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_settings_reach_the_data_and_bad_ones_are_refused(tree: Path) -> None:
    kw = TrainConfig(cache="disk", cache_short_side=40, cache_disk_max_gb=2.0).data_kwargs()
    assert (kw["cache"], kw["cache_short_side"], kw["cache_disk_max_gb"]) == ("disk", 40, 2.0)
    with pytest.raises(ConfigError, match="cache_short_side must be >= img_size"):
        make_data(tree, None, cache="disk", cache_short_side=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a writable folder: no warning
        make_data(tree, None, cache="disk", cache_short_side=40)


def test_decode_gpu_sends_the_device_the_copies(tree: Path, tmp_path: Path) -> None:
    """--decode gpu --cache disk: the workers read the copies, the device decodes them (here
    the CPU stands in for it, as in test_gpu_decode.py)."""
    folder = tmp_path / "cache"

    def items() -> list[Any]:
        data = make_data(tree, folder, decode="gpu")
        ds = data.train_loader().loader.dataset  # type: ignore[union-attr]
        return [ds[(i, 100 + i)] for i in range(len(ds))]

    first = items()
    assert len(copies(folder)) == 6
    for data, *_ in first:  # the copy's bytes, the box drawn on the copy
        assert min(Image.open(io.BytesIO(data.numpy().tobytes())).size) == SIDE
    for p in copies(folder):  # cut short: made again
        p.write_bytes(p.read_bytes()[:-50])
    again = items()
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    images, targets = decode_batch(collate_encoded(again, 16), torch.device("cpu"))
    assert images.shape == (6, 3, 16, 16) and len(targets) == 6


def test_validation_copies_follow_crop_pct(tree: Path, tmp_path: Path) -> None:
    # --crop-pct 0.5 resizes validation's short side to 32 for img_size 16: its copies are
    # made at that side, which validation's resize then leaves as it is.
    folder = tmp_path / "cache"
    data = make_data(tree, folder, crop_pct=0.5)
    assert data.eval_resize.resize_size == 32
    draws(data, "val")
    assert sorted({min(Image.open(p).size) for p in copies(folder)}) == [32]
