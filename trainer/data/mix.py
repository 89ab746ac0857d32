"""MixUp and CutMix on the device, as a step the data hands the engine.

The engine calls ``data.batch_mix(x, y, (epoch, batch_idx))`` on each training batch right
after it reaches the device (normalised), and trains on the mixed images against the soft
targets it returns; the losses in ``trainer.losses`` take them. Like torchvision's
``v2.MixUp``/``v2.CutMix``, each image is mixed with its neighbour in the batch rolled by one.

Randomness: lambda, the choice between MixUp and CutMix and the CutMix box are drawn on the
host from a NumPy generator seeded by ``(seed, epoch, batch index, rank)``: a resumed run mixes
each step exactly as the straight run did, and nothing is read back from the device.

Accuracy under mixing: lambda is folded to ``max(lambda, 1 - lambda)``, so each image's own
label always holds the larger share of its mix (CutMix pastes at most half the image). The
engine's ``outputs["targets"]`` stay the images' own labels, and ``train/acc`` counts the argmax
against that dominant label. Multi-label targets (multi-hot float rows) are mixed as they are:
``lam * y + (1 - lam) * y_rolled``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from trainer.distributed import get_rank
from trainer.rng import derive_seed

# (images, targets, (epoch, batch index)) -> (images, loss targets)
BatchMixFn = Callable[
    [torch.Tensor, torch.Tensor, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]
]


def keep_batch(
    x: torch.Tensor, y: torch.Tensor, key: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """No mixing: the batch as it is (the engine's default)."""
    return x, y


class BatchMix:
    """MixUp and/or CutMix with soft targets, on the batch's device.

    Args:
        num_classes: width of the soft targets.
        mixup: MixUp's Beta(alpha, alpha) concentration; 0 is off.
        cutmix: CutMix's Beta(alpha, alpha) concentration; 0 is off. With both on, each batch
            uses one, with even odds.
        seed: the run's seed.

    Example:
        >>> mix = BatchMix(3, mixup=0.2, seed=0)
        >>> x, soft = mix(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), (0, 0))
        >>> soft.shape
        torch.Size([4, 3])
    """

    def __init__(
        self, num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0
    ) -> None:
        if mixup <= 0 and cutmix <= 0:
            raise ValueError("BatchMix needs mixup > 0 or cutmix > 0")
        self.num_classes, self.mixup, self.cutmix, self.seed = num_classes, mixup, cutmix, seed

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, key: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(derive_seed(self.seed, *key, get_rank()))
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(rng.beta(alpha, alpha))
        lam = max(lam, 1.0 - lam)  # the image's own label dominates its mix
        other = x.roll(1, 0)
        if use_cutmix:
            x, lam = self._paste(x, other, lam, rng)
        else:
            x = x * lam + other * (1.0 - lam)
        if y.is_floating_point():  # multi-label: the label vectors themselves are mixed
            one_hot = y.float()
        else:
            one_hot = torch.zeros(y.shape[0], self.num_classes, device=y.device)
            one_hot.scatter_(1, y[:, None], 1.0)  # not F.one_hot: it reads labels back on CPU
        return x, one_hot * lam + one_hot.roll(1, 0) * (1.0 - lam)

    @staticmethod
    def _paste(
        x: torch.Tensor, other: torch.Tensor, lam: float, rng: np.random.Generator
    ) -> tuple[torch.Tensor, float]:
        """CutMix: a box of ``1 - lam`` of the area (clipped at the border) from ``other``;
        lambda becomes the share of the image left."""
        h, w = x.shape[-2:]
        r = math.sqrt(1.0 - lam)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        bh, bw = int(h * r), int(w * r)
        y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, h)
        x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        return x, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)

    def __repr__(self) -> str:
        return f"BatchMix(mixup={self.mixup}, cutmix={self.cutmix})"
