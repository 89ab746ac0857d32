"""Transforms on uint8 ``(3, H, W)`` tensors: the validation recipe, the training augmentation."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms import v2

if TYPE_CHECKING:
    from trainer.data.augment import Augment

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Validation resizes the short side to img_size / 0.875 and centre-crops img_size (the
# torchvision/timm convention, 224 -> 256).
CROP_PCT = 0.875


def resize_size(img_size: int) -> int:
    """Short side validation resizes to before the centre crop (256 for 224)."""
    return int(img_size / CROP_PCT)


def val_transform(img_size: int) -> v2.Compose:
    """Validation/test preprocessing on uint8 tensors: resize short side, centre crop."""
    return v2.Compose([v2.Resize(resize_size(img_size), antialias=True), v2.CenterCrop(img_size)])


def train_transform(
    img_size: int,
    *,
    crop_scale: float = 0.08,
    hflip: bool = True,
    color_jitter: float = 0.0,
    augment: Augment | None = None,
) -> v2.Compose:
    """Training augmentation on uint8 tensors: random resized crop, flip, optional jitter.

    ``augment`` adds, in this order: affine and perspective after the flip, the policy
    (RandAugment, TrivialAugment, ...) after the jitter, then the degradations and random
    erasing (see ``trainer.data.augment``).
    """
    ops: list[Callable[..., Any]] = [
        v2.RandomResizedCrop(img_size, scale=(crop_scale, 1.0), antialias=True)
    ]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if augment is not None:
        ops += augment.geometric()
    if color_jitter > 0:
        ops.append(jitter_transform(color_jitter))
    if augment is not None:
        ops += augment.policy() + augment.degradations()
    return v2.Compose(ops)


def jitter_transform(strength: float) -> v2.ColorJitter:
    """Brightness, contrast and saturation by ``strength``; hue by ``min(0.1, strength / 4)``."""
    s = strength
    return v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.1, s / 4))


def eval_preprocess(img: torch.Tensor, img_size: int) -> torch.Tensor:
    """Apply exactly the validation preprocessing to one uint8 ``(3, H, W)`` image.

    ``tools/predict.py`` uses this so ONNX predictions see what validation saw.
    """
    out = val_transform(img_size)(img)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    return out
