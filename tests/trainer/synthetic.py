"""A tiny in-memory data source for engine tests: learnable, uint8 images, no files."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from trainer.sampler import TrackingWeightedRandomSampler


class SyntheticData:
    """``n`` uint8 images whose class shows as a bright channel and level; 16x16 pixels."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, n: int = 64, num_classes: int = 3, batch_size: int = 16, seed: int = 0):
        self.classes = [f"c{i}" for i in range(num_classes)]
        self.num_classes = num_classes
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(n) % num_classes
        x = (torch.rand(n, 3, 16, 16, generator=g) * 60).to(torch.uint8)
        x[torch.arange(n), y % 3] += (60 + 40 * y).clamp(max=190).to(torch.uint8)[:, None, None]
        self.dataset = TensorDataset(x, y)
        self.seed = seed

    def train_loader(self) -> DataLoader:
        # Seeded per epoch (the engine calls set_epoch), so a resumed run draws the same order.
        self.sampler = TrackingWeightedRandomSampler(
            self.dataset.tensors[1].tolist(), self.num_classes, mode="none", seed=self.seed
        )
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler)

    def val_loader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size)

    def test_loader(self) -> None:
        return None
