"""BatchToDevice: a loader's batch on the device, images normalised there."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer.data.gpu_decode import EncodedBatch, decode_batch


class BatchToDevice:
    """Moves ``(images, targets)`` batches to ``device``; normalises uint8 images there.

    uint8 images become ``(x / 255 - mean) / std`` (one multiply-add on the device), float
    images are taken as already normalised. ``EncodedBatch`` batches (``--decode gpu``) are
    decoded on the device first.

    Args:
        device: where the batches go.
        mean: per-channel mean of the normalisation, or None for none.
        std: per-channel standard deviation, or None for none.
        channels_last: hand images over in NHWC memory order.
    """

    def __init__(
        self,
        device: torch.device,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        channels_last: bool,
    ) -> None:
        self.device, self.channels_last = device, channels_last
        self.scale: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None
        if mean is not None and std is not None:
            m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
            s = torch.tensor(std, device=device).view(1, -1, 1, 1)
            self.scale, self.shift = 1.0 / (255.0 * s), -m / s

    def __call__(self, batch: Any) -> tuple[torch.Tensor, ...]:
        """``(images, targets)`` on the device; ``(images,)`` for a batch of images alone (a
        tensor, or a 1-tuple), as prediction may get."""
        if isinstance(batch, EncodedBatch):  # decode="gpu": JPEGs decoded here, in a batch
            x, y = decode_batch(batch, self.device)
        elif isinstance(batch, torch.Tensor) or len(batch) == 1:
            return (self.images(batch if isinstance(batch, torch.Tensor) else batch[0]),)
        else:
            x = batch[0].to(self.device, non_blocking=True)
            y = batch[1].to(self.device, non_blocking=True)
        return self.images(x), y

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Images alone (prediction has no targets) on the device, normalised there."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if x.dtype == torch.uint8:
            x = x.float()
            if self.scale is not None and self.shift is not None:
                x = torch.addcmul(self.shift, x, self.scale)
        return x
