"""Classification losses: label-smoothed cross-entropy (optionally class-weighted) and focal.

Both take the target as class indices ``(B,)`` or as soft targets ``(B, C)``, rows of class
probabilities (what MixUp and CutMix make, see ``trainer.data.mix``). A one-hot soft target
gives the same loss as its class index, label smoothing and class weights included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def smooth(target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Soft targets ``(B, C)`` smoothed as ``nn.CrossEntropyLoss`` smooths them."""
    return target * (1.0 - label_smoothing) + label_smoothing / target.shape[1]


def soft_weight(target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each sample's class weight under a soft target: the weights averaged by its row (for
    a one-hot row, the weight of its class, which is what hard targets normalise by)."""
    return target @ weight


class CrossEntropy(nn.Module):
    """Cross-entropy on class indices or soft targets, with label smoothing and class weights.

    Class indices go to ``F.cross_entropy`` unchanged. Soft targets are smoothed like it does,
    and, with class weights, normalised by the summed per-sample weight (``soft_weight``)
    rather than by the batch size as ``nn.CrossEntropyLoss`` does for probabilities: a one-hot
    soft target then gives exactly the class-index loss.

    Args:
        weight: optional per-class weights.
        label_smoothing: in [0, 1).
    """

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not target.is_floating_point():
            return F.cross_entropy(
                logits, target, weight=self.weight, label_smoothing=self.label_smoothing
            )
        logp = logits.float().log_softmax(dim=1)
        soft = smooth(target.float(), self.label_smoothing)
        if self.weight is None:
            return -(soft * logp).sum(1).mean()
        per_sample = -(soft * self.weight * logp).sum(1)
        return per_sample.sum() / soft_weight(target.float(), self.weight).sum()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_t) ** gamma``.

    Args:
        gamma: focusing strength; 0 gives plain cross-entropy.
        weight: optional per-class weights (alpha), as in ``nn.CrossEntropyLoss``.
        label_smoothing: as in ``nn.CrossEntropyLoss``.

    Soft targets: ``p_t`` is the probability the model gives the target's distribution,
    ``sum_c target_c * p_c``, and the cross-entropy is taken against the smoothed soft target;
    a sample weighs ``soft_weight``. For one-hot rows this is the class-index loss.
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
        if target.is_floating_point():
            return self._soft(logits, target.float())
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        p_t = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)
        loss = (1.0 - p_t).pow(self.gamma) * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()


    def _soft(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = logits.log_softmax(dim=1)
        ce = -(smooth(target, self.label_smoothing) * logp).sum(1)
        p_t = (target * logp.exp()).sum(1)
        loss = (1.0 - p_t).pow(self.gamma) * ce
        if self.weight is not None:
            w = soft_weight(target, self.weight)
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

    Both kinds take class indices or soft targets (MixUp, CutMix).

    Args:
        kind: "ce" (cross-entropy) or "focal".
        label_smoothing: target smoothing in [0, 1).
        class_counts: when given, classes are weighted by inverse frequency.
        focal_gamma: the focal loss's gamma.
    """
    weight = inverse_frequency_weights(class_counts) if class_counts is not None else None
    if kind == "ce":
        return CrossEntropy(weight=weight, label_smoothing=label_smoothing)
    if kind == "focal":
        return FocalLoss(gamma=focal_gamma, weight=weight, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {kind!r}; choose 'ce' or 'focal'")
