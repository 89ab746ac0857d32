"""Transforms on uint8 ``(3, H, W)`` tensors: the validation recipe, the training augmentation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms import v2

from trainer.errors import ConfigError

if TYPE_CHECKING:
    from trainer.data.augment import Augment

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Validation resizes the short side to img_size / crop_pct and centre-crops img_size; timm's
# and torchvision's default crop_pct turns 224 into 256.
CROP_PCT = 0.875
RESIZE_MODES: tuple[str, ...] = ("crop", "squash")
INTERPOLATION = "bilinear"


def resize_size(img_size: int) -> int:
    """Short side validation resizes to before the centre crop, at the default crop_pct (256
    for 224)."""
    return EvalResize(img_size).resize_size


def resize_problems(crop_pct: Any, mode: Any) -> list[str]:
    """What is wrong with a ``crop_pct`` and a resize mode, as settings would name them."""
    problems = []
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, int | float) or not 0 < crop_pct <= 1:
        problems.append(
            f"crop_pct must be a number in (0, 1] (the share of the resized image the centre "
            f"crop keeps: 0.875 turns 224 into 256, 1.0 crops nothing), got {crop_pct!r}"
        )
    if mode not in RESIZE_MODES:
        problems.append(f"val_resize must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    return problems


@dataclass(frozen=True)
class EvalResize:
    """How validation, test, prediction and exported models bring an image to ``img_size``
    square (bilinear, antialiased, on uint8 ``(3, H, W)``).

    - ``crop``: the short side resized to ``int(img_size / crop_pct)``, then the centre
      ``img_size`` square cropped (timm's ``crop_pct``).
    - ``squash``: the whole image resized to ``img_size`` square, the aspect ratio not kept,
      no crop (documents, full-frame objects); its crop_pct is 1.0 (timm's "squash" at 1.0).

    ``labels_mapping.json`` records it (:meth:`mapping`); everything that preprocesses from a
    mapping reads it back through :meth:`from_mapping`.

    Raises:
        ConfigError: a crop_pct outside (0, 1] (or other than 1.0 for squash), an unknown mode.

    Example:
        >>> EvalResize(224).resize_size, EvalResize.of(224, 0.9, "squash").crop_pct
        (256, 1.0)
    """

    img_size: int
    crop_pct: float = CROP_PCT
    mode: str = "crop"

    def __post_init__(self) -> None:
        problems = resize_problems(self.crop_pct, self.mode)
        if self.mode == "squash" and self.crop_pct != 1:
            problems.append(f"squash keeps the whole image: its crop_pct is 1.0, not {self.crop_pct}")
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    @classmethod
    def of(cls, img_size: int, crop_pct: float = CROP_PCT, val_resize: str = "crop") -> EvalResize:
        """The resize of the settings ``--crop-pct`` and ``--val-resize``: squash keeps the
        whole image (crop_pct 1.0), so ``crop_pct`` only applies to crop."""
        return cls(img_size, 1.0 if val_resize == "squash" else crop_pct, val_resize)

    @property
    def resize_size(self) -> int:
        """The side (crop: the short side) the image is resized to before the centre crop."""
        return int(self.img_size / self.crop_pct)

    def transform(self) -> v2.Compose:
        """The resize (and crop's centre crop), as a v2 pipeline on uint8 tensors."""
        if self.mode == "squash":
            return v2.Compose([v2.Resize([self.img_size, self.img_size], antialias=True)])
        resize = v2.Resize(self.resize_size, antialias=True)
        return v2.Compose([resize, v2.CenterCrop(self.img_size)])

    def mapping(self) -> dict[str, Any]:
        """The fields ``labels_mapping.json`` records of it."""
        return {
            "image_size": self.img_size,
            "resize_size": self.resize_size,
            "crop_pct": self.crop_pct,
            "resize_mode": self.mode,
            "interpolation": INTERPOLATION,
        }

    def data_kwargs(self) -> dict[str, Any]:
        """``ImageFolderData``'s arguments for this resize (``img_size``, ``crop_pct``,
        ``val_resize``), so a tree is read as the mapping says."""
        return {"img_size": self.img_size, "crop_pct": self.crop_pct, "val_resize": self.mode}

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> EvalResize:
        """The resize a labels mapping describes; a mapping written before ``crop_pct`` and
        ``resize_mode`` existed means the old recipe (crop at 0.875).

        Raises:
            ValueError: a field this version does not know how to honour, named with the fix
                (a mapping is refused rather than guessed: a guess feeds the model other
                pixels than validation did). The message goes on from "the labels mapping
                in FILE " (``trainer.onnx_mapping.validate_labels_mapping`` adds it).
        """
        mode = mapping.get("resize_mode", "crop")
        for field, known in (("resize_mode", RESIZE_MODES), ("interpolation", (INTERPOLATION,))):
            value = mapping.get(field, known[0])
            if value not in known:
                raise ValueError(
                    f"asks for {field} {value!r}, which this version of the trainer does not "
                    f"know (it knows {', '.join(known)}); guessing would feed the model other "
                    "pixels than its validation did. Use the trainer version that exported the "
                    f"model, or set {field} to the preprocessing the model was trained with"
                )
        crop_pct = mapping.get("crop_pct", CROP_PCT if mode == "crop" else 1.0)
        size = mapping.get("image_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"has image_size {size!r}, not a positive integer; re-export it")
        try:
            resize = cls(size, crop_pct, mode)
        except ConfigError as e:
            raise ValueError(f"is malformed: {e} Re-export the model, or fix crop_pct") from e
        # Files before crop_pct: resize_size was informational, and nothing read it.
        stated = mapping.get("resize_size", resize.resize_size) if "crop_pct" in mapping else None
        if stated not in (None, resize.resize_size):
            raise ValueError(
                f"has resize_size {stated!r}, but image_size {size} / crop_pct {crop_pct} "
                f"gives {resize.resize_size}; set crop_pct to image_size / resize_size (the "
                "share the centre crop keeps), or re-export the model"
            )
        return resize


# Test-time augmentation: "flip" averages the probabilities of an image and its mirror.
TTA_MODES: tuple[str, ...] = ("none", "flip")


def check_tta(tta: str) -> str:
    """``tta`` if it is one of ``TTA_MODES``, else a ConfigError naming them."""
    if tta not in TTA_MODES:
        raise ConfigError(
            f"tta must be one of {', '.join(TTA_MODES)} (--tta), got {tta!r}: flip averages "
            "the probabilities of each image and its horizontal mirror, none runs it alone."
        )
    return tta


def as_resize(size: int | EvalResize) -> EvalResize:
    """``size`` as an ``EvalResize``: an int is the default recipe at that size."""
    return size if isinstance(size, EvalResize) else EvalResize(size)


def val_transform(size: int | EvalResize) -> v2.Compose:
    """Validation/test preprocessing on uint8 tensors: the resize and centre crop of ``size``
    (an ``EvalResize``, or an image size for the default one)."""
    return as_resize(size).transform()


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


def eval_preprocess(img: torch.Tensor, size: int | EvalResize) -> torch.Tensor:
    """Apply exactly the validation preprocessing (see ``val_transform``) to one uint8
    ``(3, H, W)`` image.

    ``tools/predict.py`` uses this so ONNX predictions see what validation saw.
    """
    out = val_transform(size)(img)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    return out
