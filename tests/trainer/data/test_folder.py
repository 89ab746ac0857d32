"""ImageFolderData: loaders, sampler, labels mapping, preprocessing, defaults."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tree, tree_digest
from tests.trainer.data.conftest import small_data
from trainer.data import ImageFolderData, eval_preprocess, load_image, resize_size
from trainer.errors import ConfigError, DataError


def test_tiny_tree_classes_counts_and_batches(tiny_tree: Path) -> None:
    data = small_data(tiny_tree)
    assert data.classes == ["bird", "cat", "dog"]
    assert data.class_to_idx == {"bird": 0, "cat": 1, "dog": 2}
    assert data.idx_to_class == {0: "bird", 1: "cat", 2: "dog"}
    assert data.num_classes == 3
    assert data.class_counts == {"train": [4, 6, 5], "val": [4, 6, 5], "test": [0, 0, 0]}
    assert data.sampler.mode == "none" and data.test_loader() is None
    assert data.bad_files == [] and data.ignored_files == []
    for loader in (data.train_loader(), data.val_loader()):
        images, targets = next(iter(loader))
        assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)
        assert targets.dtype == torch.int64 and targets.shape == (4,)
        assert sum(len(t) for _, t in loader) == 15
    val_targets = torch.cat([t for _, t in data.val_loader()]).tolist()
    assert val_targets == sorted(val_targets)  # val keeps file order


def test_without_verify_a_bad_file_is_skipped_by_the_loader_and_named(tiny_tree: Path) -> None:
    bad = tiny_tree / "val" / "bird" / "0.png"
    bad.write_bytes(b"nope")
    data = small_data(tiny_tree, verify=False)
    assert sum(len(t) for _, t in data.val_loader()) == 14  # 15 val images, one skipped
    assert list(data.bad_images.skipped) == [str(bad)]
    assert data.report()["skipped_in_training"][0]["path"] == str(bad)
    with pytest.raises(DataError, match=r"0\.png"):  # the dataset on its own still raises
        data.val_dataset()[0]  # bird comes first


def test_balanced_sampler_drives_the_train_loader(tiny_tree: Path) -> None:
    data = small_data(tiny_tree, sampler="balanced")
    assert data.sampler is not None
    targets = torch.cat([t for _, t in data.train_loader()])
    assert targets.tolist() == [data.train_samples[i][1] for i in data.sampler.last_indices]
    assert sum(data.sampler.class_counts) == 15


def test_manual_class_weights_by_name(tiny_tree: Path) -> None:
    data = small_data(tiny_tree, sampler="manual", class_weights={"cat": 0.0, "dog": 0.0})
    assert data.sampler is not None
    targets = torch.cat([t for _, t in data.train_loader()])
    assert set(targets.tolist()) == {data.class_to_idx["bird"]}
    with pytest.raises(DataError, match=r"'lion'.*Known classes: bird, cat, dog"):
        small_data(tiny_tree, sampler="manual", class_weights={"lion": 2.0})
    with pytest.raises(ConfigError, match="every training image weight 0"):
        small_data(tiny_tree, sampler="manual", class_weights={"cat": 0.0, "dog": 0.0, "bird": 0.0})
    # Weights with another sampler would be ignored: refused, naming both.
    for sampler in ("balanced", "none"):
        with pytest.raises(ValueError, match=rf"drawn by sampler='manual', not '{sampler}'"):
            small_data(tiny_tree, sampler=sampler, class_weights={"cat": 2.0})


def test_labels_mapping_contract(tiny_tree: Path, tmp_path: Path) -> None:
    data = small_data(tiny_tree, img_size=224)
    out = tmp_path / "run" / "labels_mapping.json"
    data.save_labels_mapping(out)
    mapping = json.loads(out.read_text())
    assert mapping == {
        "class_to_idx": {"bird": 0, "cat": 1, "dog": 2},
        "idx_to_class": {"0": "bird", "1": "cat", "2": "dog"},
        "num_classes": 3,
        "image_size": 224,
        "resize_size": 256,
        "crop_pct": 0.875,
        "resize_mode": "crop",
        "interpolation": "bilinear",
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    assert resize_size(224) == 256
    # Squash keeps the whole image: crop_pct 1.0 whatever crop_pct says, no crop.
    squash = small_data(tiny_tree, img_size=224, crop_pct=0.5, val_resize="squash")
    assert squash.labels_mapping() | {"crop_pct": 0.875} == mapping | {
        "resize_size": 224, "resize_mode": "squash"}  # fmt: skip
    assert squash.labels_mapping()["crop_pct"] == 1.0
    custom = small_data(tiny_tree, img_size=224, crop_pct=0.95).labels_mapping()
    assert (custom["crop_pct"], custom["resize_size"]) == (0.95, 235)


def test_eval_preprocess_matches_the_val_loader(tiny_tree: Path) -> None:
    data = small_data(tiny_tree, batch_size=1)
    images, _ = next(iter(data.val_loader()))
    path = data.val_samples[0][0]
    assert torch.equal(eval_preprocess(load_image(path), 16), images[0])


def test_user_files_are_never_modified(tiny_tree: Path) -> None:
    before = tree_digest(tiny_tree, mtimes=True)
    data = small_data(tiny_tree, cache="ram", sampler="balanced")
    for loader in (data.train_loader(), data.val_loader()):
        for _ in loader:
            pass
    assert tree_digest(tiny_tree, mtimes=True) == before


def test_default_workers(tiny_tree: Path) -> None:
    data = ImageFolderData(tiny_tree, img_size=16)
    assert data.workers == min(8, os.cpu_count() or 1)


def test_a_class_with_one_image_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_tree(tmp_path, {"a": 3, "lonely": 1})
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = small_data(tmp_path)
    assert data.class_counts["train"] == [3, 1]
    assert "lonely" in caplog.text
