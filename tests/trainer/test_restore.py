from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.restore import labels_mapping_from_checkpoint


def test_malformed_run_mapping_is_ignored_for_the_checkpoint(tmp_path: Path, caplog) -> None:
    ckpt_path = tmp_path / "checkpoints" / "best.pt"
    ckpt_path.parent.mkdir()
    ckpt = {"model": {}, "classes": ["a", "b"], "args": {"img_size": 32}}
    bad = {"idx_to_class": {"0": "a", "1": "b"}, "image_size": 32,
           "normalization": {"mean": [0, 0, 0], "std": [0, 0, 0]}}  # fmt: skip
    (tmp_path / "labels_mapping.json").write_text(json.dumps(bad))
    with caplog.at_level("WARNING"):
        mapping = labels_mapping_from_checkpoint(ckpt, ckpt_path)
    assert "labels_mapping.json" in caplog.text and "malformed" in caplog.text
    assert mapping["image_size"] == 32 and min(mapping["normalization"]["std"]) > 0
    assert mapping["idx_to_class"] == {"0": "a", "1": "b"} and mapping["num_classes"] == 2


@pytest.mark.parametrize("content", ["not json", "[1, 2]"])
def test_unreadable_run_mapping_falls_back(tmp_path: Path, content: str) -> None:
    ckpt_path = tmp_path / "checkpoints" / "last.pt"
    ckpt_path.parent.mkdir()
    (tmp_path / "labels_mapping.json").write_text(content)
    mapping = labels_mapping_from_checkpoint(
        {"model": {}, "classes": ["x", "y"], "args": {"img_size": 8}}, ckpt_path
    )
    assert mapping["class_to_idx"] == {"x": 0, "y": 1}


@pytest.mark.parametrize(
    ("args", "fields"),
    [
        ({}, {"crop_pct": 0.875, "resize_mode": "crop", "resize_size": 36}),  # older runs
        ({"crop_pct": 1.0}, {"crop_pct": 1.0, "resize_mode": "crop", "resize_size": 32}),
        ({"val_resize": "squash"}, {"crop_pct": 1.0, "resize_mode": "squash", "resize_size": 32}),
    ],
)
def test_a_mapping_rebuilt_from_the_args_has_the_runs_resize(
    tmp_path: Path, args: dict[str, object], fields: dict[str, object]
) -> None:
    ckpt = {"model": {}, "classes": ["a", "b"], "args": {"img_size": 32, **args}}
    mapping = labels_mapping_from_checkpoint(ckpt, tmp_path / "checkpoints" / "best.pt")
    assert {k: mapping[k] for k in fields} == fields
