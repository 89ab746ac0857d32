"""Images that fail to decode in a loader: skipped (the batch shrinks), named, bounded; and
the sample list in arrays that loader workers share."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from tests.trainer.data.malformed import damage, good_bytes
from trainer.data.samples import SampleArray
from trainer.data.skipping import Skipped, SkippingLoader, collate_skipping
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


def test_a_file_damaged_after_a_full_check_passed_is_skipped_not_a_worker_crash(
    tmp_path: Path,
) -> None:
    # The full check (and its cache) called the file good; then it was damaged (bit rot, a
    # rewrite that kept its stats, a change mid-run) into a PNG that segfaults torchvision's
    # native decoder. The loader's worker must survive it: named, skipped, counted.
    root = make_tree(tmp_path / "t", {"a": 3, "b": 3}, size=(8, 8))
    victim = root / "train" / "a" / "0.png"
    full = small_data(root, verify="full", workers=1, batch_size=8, max_bad_fraction=0.2)
    assert full.bad_files == []
    victim.write_bytes(damage("png", "corrupt_data", good_bytes("png")))
    assert sum(len(t) for _, t in full.train_loader()) == 5
    assert list(full.bad_images.skipped) == [str(victim)]
    assert full.bad_images.events == 1


@pytest.mark.parametrize("how", ["built-in pipeline", "own transform", "disk cache"])
def test_a_file_grown_over_the_pixel_budget_after_the_check_is_skipped_by_the_loader(
    tmp_path: Path, how: str
) -> None:
    # The start-up check held every file to --max-image-pixels; then two were replaced by
    # larger images (a PNG and a JPEG: the reduced JPEG decode has its own path). The loaders
    # hold every file they read to the budget too, rather than decode a huge image.
    from torchvision.transforms import v2

    root = make_tree(tmp_path / "t", {"a": 4, "b": 4}, size=(8, 8))
    kw: dict[str, object] = {"max_image_pixels": 40 * 40, "batch_size": 8, "max_bad_fraction": 0.3}
    if how == "own transform":
        kw["train_transform"] = v2.Compose([v2.Resize((16, 16), antialias=True)])
    if how == "disk cache":
        kw.update(cache="disk", disk_cache_dir=tmp_path / "copies", cache_short_side=16)
    data = small_data(root, **kw)
    assert data.bad_files == []
    grown = [root / "train" / "a" / "0.png", root / "train" / "a" / "1.jpg"]
    for path in grown:
        Image.new("RGB", (50, 50), (200, 10, 10)).save(path)  # 2,500 pixels: over 1,600
    assert sum(len(t) for _, t in data.train_loader()) == 6
    assert sorted(data.bad_images.skipped) == sorted(map(str, grown))
    assert all("pixel budget" in r for r in data.bad_images.skipped.values())


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


# ------------------------------------------------------------- a training batch that all failed
def _solid_tree(root: Path, counts: dict[str, int]) -> dict[str, int]:
    """``root/<class>/<i>.png`` in one flat colour each, and the grey level of each path:
    a crop, flip or resize of a flat image is the same flat image, so a batch tells which
    files it holds."""
    levels = {}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            path, level = root / cls / f"{i}.png", 20 + 30 * len(levels)
            Image.new("RGB", (8, 8), (level,) * 3).save(path)
            levels[str(path)] = level
    return levels


def test_a_training_batch_whose_images_all_failed_is_replaced(tmp_path: Path) -> None:
    root = tmp_path / "t"
    levels = _solid_tree(root, {"a": 2, "b": 1, "c": 3})  # 8 images: 4 full batches
    bad = [_undecodable(root / "a" / f"zz{i}.png", seed=i) for i in range(2)]
    data = small_data(root, batch_size=2, val_fraction=0.0, max_bad_fraction=0.5)
    loader = data.train_loader()
    found = []
    names = {str(b) for b in bad}
    for epoch in range(60):  # until a draw puts the two bad images in one batch
        data.sampler.set_epoch(epoch)
        batches = list(loader)
        sizes = [len(t) for _, t in batches]
        drawn = [str(data.train_samples[k][0]) for k in data.sampler.last_indices.tolist()]
        pairs = [set(drawn[i : i + 2]) for i in range(0, len(drawn), 2)]
        assert len(sizes) == len(loader) == len(pairs)  # no batch left out
        # One bad image: the batch shrinks by one; both: two replacements make it whole.
        assert sizes == [2 if p == names else 2 - len(p & names) for p in pairs]
        found += [batches[i] for i, p in enumerate(pairs) if p == names]
        if found:
            break
    assert found, "no draw put both bad images in one batch: pick other epochs"
    assert set(data.bad_images.skipped) == {str(b) for b in bad}
    # In dataset order a/0, a/1, a/zz0, a/zz1, b/0, c/0, ...: each failed image is replaced
    # by the next good one that no other replacement took, b/0 and c/0.
    x, y = found[0]
    grey = x.float().mean(dim=(1, 2, 3)).round().int().tolist()
    got = sorted(zip(grey, y.tolist(), strict=True))
    assert got == [(levels[str(root / "b" / "0.png")], 1), (levels[str(root / "c" / "0.png")], 2)]


def test_replacements_are_the_next_good_samples_under_the_failed_draws_seed(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "t", {"a": 3, "b": 3}, size=(8, 8), splits=())
    _undecodable(root / "a" / "zz.png")
    data = small_data(root, batch_size=1, val_fraction=0.0, max_bad_fraction=0.5)
    loader = data.train_loader()
    assert isinstance(loader, SkippingLoader)
    ds = loader.dataset
    bad = next(i for i in range(len(ds)) if ds.samples.path(i).endswith("zz.png"))
    (x, y), (x2, y2, _) = loader.replace([Skipped("zz.png", "bad", (bad, 7))]), ds[(bad + 1) % 7, 7]
    assert torch.equal(x[0], x2) and y.tolist() == [y2]  # the next sample, the same seed
    last = len(ds) - 1  # wraps around; a failing one on the way is skipped and recorded
    _undecodable(Path(ds.samples.path(0)))
    (x, _), (x3, *_) = loader.replace([Skipped("p", "bad", (last, 3))]), ds[1, 3]
    assert torch.equal(x[0], x3) and str(ds.samples.path(0)) in data.bad_images.skipped


def test_no_image_left_to_replace_with_is_a_data_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"a": 2, "b": 2}, size=(8, 8), splits=())
    data = small_data(root, batch_size=1, val_fraction=0.0, max_bad_fraction=1.0)
    for p, _ in data.train_samples:
        _undecodable(p)
    with pytest.raises(DataError, match="could be decoded"):
        list(data.train_loader())


def _ddp_all_bad_batch(rank: int, world: int, port: int, root: Path, out: Path) -> None:
    from tests.conftest import join_as_rank
    from trainer.distributed import destroy_distributed, init_distributed
    from trainer.engine import Engine

    join_as_rank(rank, world, port)
    assert init_distributed("cpu")
    try:
        # One image per rank and step: the rank that draws the bad image has a batch with no
        # good image, while the other has a good one and waits for it in the all-reduce.
        data = small_data(root, img_size=8, batch_size=1, val_fraction=0.0, max_bad_fraction=0.3)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        engine = Engine(model, data, max_epochs=2, device="cpu", sanity_steps=0)
        engine.fit()
        result = {"step": engine.state.step, "skipped": sorted(data.bad_images.skipped)}
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        destroy_distributed()


def test_under_ddp_a_rank_whose_batch_all_failed_steps_with_the_others(tmp_path: Path) -> None:
    from tests.conftest import run_ranks

    root = make_tree(tmp_path / "t", {"a": 4, "b": 4}, size=(8, 8), splits=())
    bad = _undecodable(root / "a" / "zz.png")  # 9 images: 5 steps per rank and epoch
    run_ranks(_ddp_all_bad_batch, root, tmp_path, timeout=90)  # a stall fails, not hangs
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["step"] for r in ranks] == [10, 10]
    assert str(bad) in {p for r in ranks for p in r["skipped"]}


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_name_their_samples_when_shuffled_with_skips_and_replacements(
    tmp_path: Path, workers: int
) -> None:
    # Flat images: each batch's grey levels say which files it holds; the loader's indices
    # must name the same files, in batch order, past a skipped image and a replaced batch.
    root = tmp_path / "t"
    levels = _solid_tree(root, {"a": 2, "b": 1, "c": 3})
    bad = {str(_undecodable(root / "a" / f"zz{i}.png", seed=i)) for i in range(2)}
    data = small_data(root, batch_size=2, val_fraction=0.0, max_bad_fraction=0.5, workers=workers)
    loader = data.train_loader()
    shrunk = replaced = 0
    for epoch in range(60):  # until a draw puts the two bad images in one batch
        if shrunk and replaced:
            break
        data.sampler.set_epoch(epoch)
        drawn = [str(data.train_samples[k][0]) for k in data.sampler.last_indices.tolist()]
        for b, (x, y) in enumerate(loader):
            assert loader.indices is not None
            names = [str(data.train_samples[i][0]) for i in loader.indices.tolist()]
            grey = x.float().mean(dim=(1, 2, 3)).round().int().tolist()
            assert grey == [levels[n] for n in names]
            assert y.tolist() == [data.train_samples[i][1] for i in loader.indices.tolist()]
            pair = set(drawn[2 * b : 2 * b + 2])
            shrunk += len(pair & bad) == 1
            replaced += pair == bad
    assert shrunk and replaced, "no draw met both cases: pick other epochs"
    val = data.val_loader()  # evaluation batches are left as they were
    assert getattr(val, "indices", None) is None
