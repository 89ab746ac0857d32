"""Pluggable pipelines (trainer.data.pipelines): your own train and val transforms, from the
API or a --transforms file; a val pipeline the labels mapping cannot express is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.transforms import v2

from tests.trainer.data.conftest import small_data
from trainer.data import eval_preprocess, resize_size
from trainer.data.pipelines import check_val_transform, load_transforms_file
from trainer.data.transforms import EvalResize
from trainer.errors import ConfigError

GOOD_FILE = """
from torchvision.transforms import v2

def train_transforms(img_size):
    return v2.Compose([v2.RandomResizedCrop(img_size, antialias=True), v2.RandomGrayscale(p=1.0)])

def val_transforms(img_size):
    return v2.Compose([v2.Resize(int(img_size / 0.875), antialias=True), v2.CenterCrop(img_size)])
"""


def test_api_pipelines_replace_the_built_in_ones(tiny_tree: Path) -> None:
    gray = v2.Compose([v2.RandomResizedCrop(16, antialias=True), v2.RandomGrayscale(p=1.0)])
    val = v2.Compose([v2.Resize(resize_size(16), antialias=True), v2.CenterCrop(16)])
    data = small_data(tiny_tree, train_transform=gray, val_transform=val)
    assert data.train_pipeline() is gray and data.val_pipeline() is val
    images, _ = next(iter(data.train_loader()))
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    val_images = torch.cat([x for x, _ in data.val_loader()])
    plain = torch.cat([x for x, _ in small_data(tiny_tree).val_loader()])
    assert torch.equal(val_images, plain)


def test_a_transforms_file_is_loaded_and_checked(tmp_path: Path) -> None:
    f = tmp_path / "my_transforms.py"
    f.write_text(GOOD_FILE)
    train, val = load_transforms_file(f, 24)
    img = torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8)
    assert torch.equal(val(img), eval_preprocess(img, 24))
    out = train(img)
    assert out.shape == (3, 24, 24) and torch.equal(out[0], out[1])


@pytest.mark.parametrize(
    ("val", "message"),
    [
        # Another crop share than the mapping's resize_size: exported models would differ.
        (lambda s: v2.Compose([v2.Resize(s, antialias=True), v2.CenterCrop(s)]), "labels_mapping"),
        (lambda s: v2.Compose([v2.Resize(int(s / 0.875)), v2.CenterCrop(s), v2.Grayscale(3)]),
         "labels_mapping"),
        (lambda s: v2.Compose([v2.RandomResizedCrop(s, antialias=True)]), "random"),
        (lambda s: v2.Compose([v2.Resize(int(s / 0.875)), v2.CenterCrop(s),
                               v2.ToDtype(torch.float32, scale=True)]), "uint8"),
        (lambda s: v2.Resize(int(s / 0.875)), "shape"),
    ],
)  # fmt: skip
def test_a_val_pipeline_the_mapping_cannot_express_is_refused(
    tiny_tree: Path, val: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        small_data(tiny_tree, val_transform=val(16))  # type: ignore[operator]
    assert "val_transform" in str(e.value)


# Pipelines users write, the crop_pct / val_resize that describe each, and their flags.
@pytest.mark.parametrize(
    ("val", "fields", "flags"),
    [
        (lambda s: v2.Compose([v2.Resize(s, antialias=True), v2.CenterCrop(s)]),
         {"crop_pct": 1.0}, "--val-resize crop --crop-pct 1.0"),
        (lambda s: v2.Resize((s, s), antialias=True),
         {"val_resize": "squash"}, "--val-resize squash"),
        (lambda s: v2.Compose([v2.Resize(int(s / 0.5), antialias=True), v2.CenterCrop(s)]),
         {"crop_pct": 0.5}, "--val-resize crop --crop-pct 0.5"),
    ],
)  # fmt: skip
def test_every_val_pipeline_the_fields_describe_is_accepted_and_the_error_names_them(
    tiny_tree: Path, val: Any, fields: dict[str, Any], flags: str
) -> None:
    data = small_data(tiny_tree, val_transform=val(16), **fields)
    assert data.labels_mapping()["resize_mode"] == fields.get("val_resize", "crop")
    # The built-in pipeline of those fields computes the same pixels (and the mapping says so).
    assert torch.equal(torch.cat([x for x, _ in data.val_loader()]),
                       torch.cat([x for x, _ in small_data(tiny_tree, **fields).val_loader()]))
    # With the default fields it is refused, and the message says which fields to set.
    with pytest.raises(ConfigError, match="labels_mapping") as e:
        check_val_transform(val(16), 16, "val_transform")
    assert flags in str(e.value) and "ImageFolderData(crop_pct=" in str(e.value)


def test_a_val_pipeline_no_field_describes_names_both_recipes_and_fields(tiny_tree: Path) -> None:
    gray = v2.Compose([v2.Resize((16, 16), antialias=True), v2.Grayscale(3)])
    with pytest.raises(ConfigError, match=r"crop_pct 1.0, resize_mode squash.*--crop-pct and "
                                          r"--val-resize") as e:  # fmt: skip
        small_data(tiny_tree, val_transform=gray, val_resize="squash")
    assert "It computes" not in str(e.value)


def test_a_transforms_file_is_checked_against_the_fields(tmp_path: Path) -> None:
    f = tmp_path / "tf.py"
    f.write_text(GOOD_FILE.replace("int(img_size / 0.875)", "img_size"))
    load_transforms_file(f, EvalResize(16, 1.0))  # as --crop-pct 1.0 describes it
    with pytest.raises(ConfigError, match="--crop-pct 1.0"):
        load_transforms_file(f, 16)


def test_a_train_pipeline_must_return_uint8_images_of_img_size(tiny_tree: Path) -> None:
    with pytest.raises(ConfigError, match=r"train_transform.*uint8.*\(3, 16, 16\)"):
        small_data(tiny_tree, train_transform=v2.RandomResizedCrop(20, antialias=True))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no such file"),
        ("import nonexistent_module_xyz\n", "failed to import"),
        ("def train_transforms(img_size):\n    return None\n", "val_transforms"),
        (GOOD_FILE.replace("int(img_size / 0.875)", "img_size * 2"), "labels_mapping"),
        (GOOD_FILE + "\ndef val_transforms(img_size):\n    raise RuntimeError('boom')\n", "boom"),
    ],
)
def test_transforms_file_problems_name_the_file(
    tmp_path: Path, text: str | None, message: str
) -> None:
    f = tmp_path / "tf.py"
    if text is not None:
        f.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_transforms_file(f, 16)
    assert f"--transforms {f}" in str(e.value)
