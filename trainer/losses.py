"""Classification losses: label-smoothed cross-entropy (optionally class-weighted) and focal."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_t) ** gamma``.

    Args:
        gamma: focusing strength; 0 gives plain cross-entropy.
        weight: optional per-class weights (alpha), as in ``nn.CrossEntropyLoss``.
        label_smoothing: as in ``nn.CrossEntropyLoss``.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        p_t = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        loss = (1.0 - p_t).pow(self.gamma) * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


def inverse_frequency_weights(counts: Sequence[int]) -> torch.Tensor:
    """Per-class weights proportional to 1/count, normalised to mean 1; empty classes get 0."""
    c = torch.tensor(counts, dtype=torch.float32)
    w = torch.where(c > 0, 1.0 / c.clamp(min=1), torch.zeros_like(c))
    return w * (c > 0).sum() / w.sum()


def build_loss(
    kind: str = "ce",
    *,
    label_smoothing: float = 0.0,
    class_counts: Sequence[int] | None = None,
    focal_gamma: float = 2.0,
) -> nn.Module:
    """Build the training loss.

    Args:
        kind: "ce" (cross-entropy) or "focal".
        label_smoothing: target smoothing in [0, 1).
        class_counts: when given, classes are weighted by inverse frequency.
        focal_gamma: the focal loss's gamma.
    """
    weight = inverse_frequency_weights(class_counts) if class_counts is not None else None
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if kind == "focal":
        return FocalLoss(gamma=focal_gamma, weight=weight, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {kind!r}; choose 'ce' or 'focal'")
