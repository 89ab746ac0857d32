"""Images that fail to decode in a loader: skipped (the batch shrinks), named, bounded; and
the sample list in arrays that loader workers share."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from tests.trainer.data.malformed import damage, good_bytes
from trainer.data.samples import SampleArray
from trainer.data.skipping import Skipped, collate_skipping
from trainer.errors import DataError


def _undecodable(path: Path, seed: int = 0) -> Path:
    """A PNG whose header is fine but whose pixel data is corrupt: only decoding shows it."""
    path.write_bytes(damage("png", "corrupt_data", good_bytes("png", seed=seed)))
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_a_file_failing_in_the_loader_is_skipped_counted_and_reported(
    tiny_tree: Path, tmp_path: Path, workers: int
) -> None:
    bad = _undecodable(tiny_tree / "train" / "cat" / "zz.png")
    data = small_data(tiny_tree, workers=workers, batch_size=16, max_bad_fraction=0.1)
    assert data.bad_files == []  # its header passes the start-up check
    report = tmp_path / "data_report.json"
    data.write_report(report)
    loader = data.train_loader()
    for _ in range(2):  # two epochs: counted each time it is drawn, named once
        sizes = [len(t) for _, t in loader]
        assert sizes == [15]  # 16 drawn, one skipped: the batch shrinks by one
    assert data.bad_images.skipped == {str(bad): data.bad_images.skipped[str(bad)]}
    assert "broken data stream" in data.bad_images.skipped[str(bad)]
    assert data.bad_images.events == 2
    written = json.loads(report.read_text())
    assert written["skipped_in_training"] == [
        {"path": str(bad), "reason": data.bad_images.skipped[str(bad)]}
    ]
    assert written["skip_events"] == 2


def test_too_many_failures_in_training_stop_with_a_clear_message(tiny_tree: Path) -> None:
    for i in range(3):
        _undecodable(tiny_tree / "val" / "dog" / f"zz{i}.png", seed=i)
    data = small_data(tiny_tree, max_bad_fraction=0.05)  # 3 of 33 images: over 5%
    with pytest.raises(DataError, match="max-bad-fraction") as info:
        list(data.val_loader())
    assert "zz" in str(info.value) and "during training" in str(info.value)


def test_a_batch_with_only_bad_images_is_left_out(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"a": 3, "b": 3}, size=(8, 8))
    for i in range(5):
        _undecodable(root / "val" / "a" / f"zz{i}.png", seed=i)
    data = small_data(root, batch_size=4, max_bad_fraction=0.5)
    batches = [len(t) for _, t in data.val_loader()]
    # val in file order: a/0,1,2,zz0 | a/zz1..zz4 (all bad: no batch) | b/0,1,2
    assert batches == [3, 3]


def test_full_check_decodes_natively_only_after_a_checker_survived(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"a": 3, "b": 3}, size=(8, 8))
    crash = _undecodable(root / "train" / "a" / "zz.png")  # segfaults torchvision's decoder
    header = small_data(root, max_bad_fraction=0.2)
    assert not header.train_dataset().native  # Pillow: an exception, never a crash
    full = small_data(root, verify="full", max_bad_fraction=0.2)
    assert full.train_dataset().native
    assert [(p, "crashed the image decoder" in r) for p, r in full.bad_files] == [(crash, True)]
    assert sum(len(t) for _, t in full.train_loader()) == 6


def test_collate_skipping() -> None:
    good = (torch.zeros(3, 2, 2, dtype=torch.uint8), 1)
    batch, skipped = collate_skipping([good, Skipped("x.png", "bad"), good])
    assert batch[0].shape == (2, 3, 2, 2) and skipped == [Skipped("x.png", "bad")]
    assert collate_skipping([Skipped("x.png", "bad")]) == (None, [Skipped("x.png", "bad")])


def test_samples_are_numpy_arrays_with_no_python_object_per_sample(tiny_tree: Path) -> None:
    data = small_data(tiny_tree)
    ds = data.train_dataset()
    assert isinstance(ds.samples, SampleArray)
    assert list(ds.samples) == data.train_samples
    held = [v for v in vars(ds.samples).values() if not isinstance(v, (int, float))]
    assert all(isinstance(v, np.ndarray) for v in held)  # nothing that grows in objects
    # What a worker receives: a few arrays, not one object per sample.
    big = SampleArray([(Path(f"/data/train/c{i % 10}/{i:07d}.jpg"), i % 10) for i in range(20000)])
    assert len(pickle.dumps(big)) < big.nbytes + 1000
    # path bytes and a NUL, an offset and a label per sample, and one more offset
    assert big.nbytes == sum(len(str(p)) + 1 + 16 for p, _ in big) + 8
    assert big[12345] == (Path("/data/train/c5/0012345.jpg"), 5) and big[-1][1] == 9
