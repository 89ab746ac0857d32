"""The augmentation beyond crop, flip and jitter: AutoAugment-style policies, random erasing,
degradations (JPEG, blur, noise, downscale, affine, perspective), and MixUp/CutMix.

Per-image operations are torchvision.transforms.v2 on uint8 ``(3, H, W)`` tensors, run in the
loader's workers under each image's own seed (``trainer.rng.torch_seeded``), so they are
reproducible and a resumed run draws what the straight run drew. MixUp and CutMix act on the
batch, on the device (``trainer.data.mix``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainer.data.mix import BatchMix

AUTO_AUGMENT: tuple[str, ...] = ("none", "randaugment", "trivialaugment", "autoaugment", "augmix")
# Fixed strengths of the degradations whose flag is a probability.
BLUR_KERNEL, BLUR_SIGMA = 7, (0.1, 2.0)
NOISE_SIGMA = 0.08  # on the [0, 1] scale
AFFINE: dict[str, Any] = {
    "degrees": 15.0,
    "translate": (0.1, 0.1),
    "scale": (0.9, 1.1),
    "shear": 10.0,
    "interpolation": v2.InterpolationMode.BILINEAR,
}
PERSPECTIVE_DISTORTION = 0.3
# Erased boxes take the ImageNet mean colour: 0 after normalisation, as on float pipelines.
ERASE_VALUE = [124, 116, 104]


@dataclass(frozen=True)
class Augment:
    """What to add to the training augmentation; every field off by default.

    Args:
        auto_augment: "none", "randaugment", "trivialaugment" (TrivialAugmentWide),
            "autoaugment" (the ImageNet policy) or "augmix".
        random_erasing: probability of erasing a random box (to the mean colour).
        jpeg_quality: re-encode every image as JPEG with a quality drawn from
            ``[jpeg_quality, 100]``; 0 is off.
        blur: probability of a Gaussian blur (kernel 7, sigma drawn from 0.1 to 2).
        noise: probability of Gaussian noise (sigma 0.08 of the full range).
        downscale: shrink every image by a factor drawn from ``[downscale, 1]`` and scale it
            back (the low-resolution look); 0 is off.
        affine: probability of a random affine map (rotation 15 degrees, translation 10%,
            scale 0.9 to 1.1, shear 10 degrees).
        perspective: probability of a random perspective warp (distortion 0.3).
        mixup: MixUp's Beta(alpha, alpha) concentration; 0 is off.
        cutmix: CutMix's Beta(alpha, alpha) concentration; 0 is off. With both on, each
            batch uses one of them, drawn with even odds.

    Example:
        >>> Augment(auto_augment="trivialaugment", random_erasing=0.25).per_image
        True
    """

    auto_augment: str = "none"
    random_erasing: float = 0.0
    jpeg_quality: int = 0
    blur: float = 0.0
    noise: float = 0.0
    downscale: float = 0.0
    affine: float = 0.0
    perspective: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0

    def problems(self) -> list[str]:
        """What is wrong with the values, each naming its field and flag; empty if nothing."""
        out = []
        if self.auto_augment not in AUTO_AUGMENT:
            out.append(
                f"auto_augment (--auto-augment) must be one of {', '.join(AUTO_AUGMENT)}, "
                f"got {self.auto_augment!r}"
            )
        for name in ("random_erasing", "blur", "noise", "affine", "perspective"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                flag = "--" + name.replace("_", "-")
                out.append(f"{name} ({flag}) is a probability in [0, 1], got {value}")
        if not (self.jpeg_quality == 0 or 1 <= self.jpeg_quality <= 100):
            out.append(
                f"jpeg_quality (--jpeg-quality) is the lowest JPEG quality, 1 to 100 (0 is off), "
                f"got {self.jpeg_quality}"
            )
        if not 0 <= self.downscale < 1:
            out.append(
                f"downscale (--downscale) is the smallest scale factor, in (0, 1) (0 is off), "
                f"got {self.downscale}"
            )
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                out.append(
                    f"{name} (--{name}) is a Beta concentration >= 0, got {getattr(self, name)}"
                )
        return out

    @property
    def per_image_flags(self) -> list[str]:
        """The flags of the per-image operations that are on (for error messages)."""
        on = [k for k, v in asdict(self).items() if k not in ("mixup", "cutmix") and v]
        return ["--" + k.replace("_", "-") for k in on if getattr(self, k) != "none"]

    @property
    def per_image(self) -> bool:
        """Whether any per-image operation (anything but MixUp/CutMix) is on."""
        return bool(self.per_image_flags)

    def geometric(self) -> list[Callable[..., Any]]:
        """Affine and perspective: after the crop and flip, before the colour operations."""
        ops: list[Callable[..., Any]] = []
        if self.affine > 0:
            ops.append(v2.RandomApply([v2.RandomAffine(**AFFINE)], p=self.affine))
        if self.perspective > 0:
            ops.append(v2.RandomPerspective(PERSPECTIVE_DISTORTION, p=self.perspective))
        return ops

    def policy(self) -> list[Callable[..., Any]]:
        """The AutoAugment-style policy, if any."""
        return {
            "none": [],
            "randaugment": [v2.RandAugment()],
            "trivialaugment": [v2.TrivialAugmentWide()],
            "autoaugment": [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)],
            "augmix": [v2.AugMix()],
        }[self.auto_augment]

    def degradations(self) -> list[Callable[..., Any]]:
        """Downscale, blur, noise, then JPEG (a camera's order), then random erasing."""
        ops: list[Callable[..., Any]] = []
        if self.downscale > 0:
            ops.append(RandomDownscale(self.downscale))
        if self.blur > 0:
            ops.append(v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL, BLUR_SIGMA)], p=self.blur))
        if self.noise > 0:
            noise = v2.Compose([
                v2.ToDtype(torch.float32, scale=True),
                v2.GaussianNoise(sigma=NOISE_SIGMA, clip=True),
                v2.ToDtype(torch.uint8, scale=True),
            ])  # fmt: skip
            ops.append(v2.RandomApply([noise], p=self.noise))
        if self.jpeg_quality > 0:
            ops.append(v2.JPEG((self.jpeg_quality, 100)))
        if self.random_erasing > 0:
            ops.append(v2.RandomErasing(self.random_erasing, value=ERASE_VALUE))
        return ops

    def batch_mix(self, num_classes: int, seed: int) -> BatchMix | None:
        """The device-side MixUp/CutMix step, or None when both are off."""
        if self.mixup <= 0 and self.cutmix <= 0:
            return None
        return BatchMix(num_classes, mixup=self.mixup, cutmix=self.cutmix, seed=seed)


class RandomDownscale(nn.Module):
    """Shrink a uint8 image by a factor drawn from ``[low, 1]`` (antialiased) and resize it back
    (bilinear): the soft, low-resolution look of an upscaled small image.

    Args:
        low: the smallest factor, in (0, 1).
    """

    def __init__(self, low: float) -> None:
        super().__init__()
        self.low = low

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        factor = float(torch.empty(()).uniform_(self.low, 1.0))
        h, w = img.shape[-2:]
        small = F.resize(
            img, [max(1, round(h * factor)), max(1, round(w * factor))], antialias=True
        )
        return F.resize(small, [h, w], antialias=True)

    def extra_repr(self) -> str:
        return f"low={self.low}"
