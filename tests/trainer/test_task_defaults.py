"""A task's defaults come from the library: multi-label data is seen whole (crop scale 1.0 in
training, the validation image squashed, not centre-cropped) and monitored by val/mAP, from
Python as from tools/train.py, unless the caller sets the value; the RAM cache then serves the
validation pixels the disk path computes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from hooks import default_hooks
from hooks.checkpoint import CheckpointHook
from hooks.early_stopping import EarlyStoppingHook
from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from tools.train_config import build_data, parse_config, record_effective
from trainer.config import TrainConfig
from trainer.data.transforms import EvalResize
from trainer.engine import Engine
from trainer.errors import ConfigError
from trainer.models import build_model
from trainer.restore import labels_mapping_from_checkpoint
from trainer.run_folder import library_args

TF_CENTRE_CROP = """
from torchvision.transforms import v2

def train_transforms(img_size):
    return v2.Compose([v2.RandomResizedCrop(img_size, antialias=True)])

def val_transforms(img_size):
    return v2.Compose([v2.Resize(int(img_size / 0.875), antialias=True), v2.CenterCrop(img_size)])
"""


def multilabel_file(root: Path) -> Path:
    """8 landscape PNGs of 20x12 (larger than the 8 px the tests train at, and not square, so
    a crop and a squash, or one resize and two, differ) in a JSONL file of label lists."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(8):
        pixels = rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img/{i}.png")
        labels = [c for k, c in enumerate(("a", "b")) if (i >> k) & 1 or i % 3 == k]
        rows.append({"path": f"img/{i}.png", "label": labels, "split": "train" if i < 5 else "val"})
    path = root / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    return multilabel_file(tmp_path / "ml")


def _crop_scale(data: Any) -> tuple[float, float]:
    return tuple(data.train_pipeline().transforms[0].scale)  # RandomResizedCrop's


def test_a_list_label_file_in_python_is_seen_whole_and_monitored_by_map(
    labels: Path, tmp_path: Path
) -> None:
    data = small_data(labels, img_size=8, verify="none")
    assert data.task == "multilabel"
    assert data.crop_scale == 1.0 and _crop_scale(data) == (1.0, 1.0)
    assert data.eval_resize == EvalResize(8, 1.0, "squash")
    assert data.labels_mapping()["resize_mode"] == "squash"
    assert "CenterCrop" not in repr(data.val_pipeline())
    # The engine and the default hooks monitor the task's metric.
    engine = Engine(build_model("small_cnn", 2), data, device="cpu", sanity_steps=0)
    assert engine.monitor == "val/mAP" and engine.mode == "max"
    hooks = default_hooks(tmp_path / "run", early_stopping=1, progress=False)
    stop = next(h for h in hooks if isinstance(h, EarlyStoppingHook))
    ckpt = next(h for h in hooks if isinstance(h, CheckpointHook))
    engine.state.phase, engine.state.metrics = "val", {"val/mAP": 0.5, "val/loss": 0.7}
    stop.on_validation_end(engine)  # val/acc would be a KeyError: multi-label has none
    assert stop.best == 0.5 and (ckpt.monitor or engine.monitor) == "val/mAP"
    # A run made in Python records the values in use (args.json, the checkpoints' args) ...
    args = library_args(engine)
    assert (args["crop_scale"], args["val_resize"], args["monitor"]) == (1.0, "squash", "val/mAP")
    # ... and a checkpoint whose args leave the resize unset is read with the task's.
    ckpt_dict = {"classes": ["a", "b"], "args": {"img_size": 8, "val_resize": None},
                 "state": {"thresholds": [0.5, 0.5]}}  # fmt: skip
    rebuilt = labels_mapping_from_checkpoint(ckpt_dict, tmp_path / "elsewhere" / "best.pt")
    assert rebuilt["resize_mode"] == "squash" and rebuilt["task"] == "multilabel"
    # Single-label data keeps the generic defaults.
    single = small_data(make_tree(tmp_path / "tree"), img_size=8, verify="none")
    assert single.crop_scale == 0.08 and single.eval_resize == EvalResize(8)
    assert Engine(build_model("small_cnn", 3), single, device="cpu").monitor == "val/acc"


def test_explicit_values_win_over_the_task_defaults_in_python(labels: Path) -> None:
    data = small_data(labels, img_size=8, verify="none", crop_scale=0.08, val_resize="crop")
    assert data.crop_scale == 0.08 and _crop_scale(data) == (0.08, 1.0)
    assert data.eval_resize == EvalResize(8)
    # A crop_pct of its own asks for the crop it describes.
    pct = small_data(labels, img_size=8, verify="none", crop_pct=0.5)
    assert pct.eval_resize == EvalResize(8, 0.5, "crop") and pct.crop_scale == 1.0
    engine = Engine(build_model("small_cnn", 2), data, device="cpu", monitor="val/loss", mode="min")
    assert engine.monitor == "val/loss"


@pytest.mark.parametrize(
    ("flags", "effective", "logged"),
    [
        ([], {"crop_scale": 1.0, "val_resize": "squash", "monitor": "val/mAP"},
         "multilabel data: --crop-scale 1.0, --val-resize squash, --monitor val/mAP"),
        (["--crop-scale", "0.08", "--val-resize", "crop", "--monitor", "val/macro_f1"],
         {"crop_scale": 0.08, "val_resize": "crop", "monitor": "val/macro_f1"}, None),
        (["--crop-scale", "0.5"], {"crop_scale": 0.5, "val_resize": "squash", "monitor": "val/mAP"},
         "multilabel data: --val-resize squash, --monitor val/mAP"),
    ],
)  # fmt: skip
def test_the_cli_keeps_explicit_flags_and_records_the_effective_values(
    labels: Path, flags: list[str], effective: dict[str, Any], logged: str | None
) -> None:
    config = parse_config(["--data", str(labels), "--img-size", "8", "--workers", "0",
                           "--verify", "none", *flags])  # fmt: skip
    data = build_data(TrainConfig.from_dict(config), labels)
    line = record_effective(config, data)
    assert {k: config[k] for k in effective} == effective and line == logged
    assert data.crop_scale == effective["crop_scale"]
    assert data.eval_resize.mode == effective["val_resize"]
    # Single-label data: the generic values, recorded, and nothing to log.
    tree = make_tree(labels.parent / "tree")
    config = parse_config(["--data", str(tree), "--img-size", "8", "--workers", "0"])
    assert record_effective(config, build_data(TrainConfig.from_dict(config), tree)) is None
    used = (config["crop_scale"], config["val_resize"], config["monitor"])
    assert used == (0.08, "crop", "val/acc")


def test_a_transforms_file_is_checked_against_the_task_default(labels: Path) -> None:
    tf = labels.parent / "tf.py"
    tf.write_text(TF_CENTRE_CROP)
    config = parse_config(["--data", str(labels), "--img-size", "8", "--workers", "0",
                           "--transforms", str(tf)])  # fmt: skip
    with pytest.raises(ConfigError, match=r"--transforms .*tf\.py.*--val-resize crop") as e:
        build_data(TrainConfig.from_dict(config), labels)
    assert "resize_mode squash" in str(e.value)
    config = parse_config(["--data", str(labels), "--img-size", "8", "--workers", "0",
                           "--transforms", str(tf), "--val-resize", "crop"])  # fmt: skip
    data = build_data(TrainConfig.from_dict(config), labels)
    assert data.eval_resize == EvalResize(8) and data.val_pipeline() is data.val_transform


@pytest.mark.parametrize("val_resize", [None, "crop"])
def test_ram_cached_validation_pixels_equal_the_disk_path(
    labels: Path, val_resize: str | None
) -> None:
    kw: dict[str, Any] = {"img_size": 8, "verify": "none", "val_resize": val_resize}
    disk, ram = small_data(labels, **kw), small_data(labels, cache="ram", **kw)
    assert ram.cached and disk.eval_resize == ram.eval_resize
    assert disk.eval_resize.mode == (val_resize or "squash")
    a, b = disk.val_dataset(), ram.val_dataset()
    assert len(a) == len(b) == 3
    for i in range(len(a)):
        assert torch.equal(a[i][0], b[i][0]), i
