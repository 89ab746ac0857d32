"""Classification losses: label-smoothed cross-entropy (optionally class-weighted) and focal.

Both take the target as class indices ``(B,)`` or as soft targets ``(B, C)``, rows of class
probabilities (what MixUp and CutMix make, see ``trainer.data.mix``). A one-hot soft target
gives the same loss as its class index, label smoothing and class weights included.

Multi-label losses (``BinaryCrossEntropy``, ``AsymmetricLoss``) take multi-hot or mixed
``(B, C)`` float targets, one independent yes/no per class.
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


class AsymmetricLoss(nn.Module):
    """Multi-label binary cross-entropy per class, with asymmetric focusing (Ridnik et al.
    2021, "Asymmetric Loss For Multi-Label Classification"): a positive's term is scaled by
    ``(1 - p) ** gamma_pos``, a negative's by ``p_m ** gamma_neg`` with ``p_m = max(p - clip,
    0)``, so the many easy negatives of a multi-label image weigh little. Averaged over images
    and classes. ``gamma_pos = gamma_neg = clip = 0`` is plain ``BinaryCrossEntropy``.

    Args:
        gamma_neg, gamma_pos: focusing strengths; the paper's defaults are 4 and 0.
        clip: the probability margin shifted off negatives (0.05 in the paper).
        pos_weight: optional ``(C,)`` weights of the positive terms (``balanced``: negatives
            over positives of each class).
        label_smoothing: targets move towards 0.5: ``y * (1 - s) + s / 2``.
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        pos_weight: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip
        self.label_smoothing = label_smoothing
        self.pos_weight: torch.Tensor | None
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, y = logits.float(), target.float()
        if self.label_smoothing > 0:
            y = y * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        if self.gamma_neg == self.gamma_pos == self.clip == 0:  # plain BCE, the stable kernel
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=self.pos_weight)
        p = logits.sigmoid()
        p_neg = (1.0 - p + self.clip).clamp(max=1.0) if self.clip > 0 else 1.0 - p
        log_pos, log_neg = F.logsigmoid(logits), F.logsigmoid(-logits)
        if self.clip > 0:
            log_neg = p_neg.clamp(min=1e-8).log()
        pos = y * log_pos * (1.0 - p).pow(self.gamma_pos)
        neg = (1.0 - y) * log_neg * (1.0 - p_neg).pow(self.gamma_neg)
        if self.pos_weight is not None:
            pos = pos * self.pos_weight
        return -(pos + neg).mean()


class BinaryCrossEntropy(AsymmetricLoss):
    """Multi-label binary cross-entropy with logits (the multi-label default), with label
    smoothing towards 0.5 and optional positive weights; see ``AsymmetricLoss``."""

    def __init__(
        self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(0.0, 0.0, 0.0, pos_weight=pos_weight, label_smoothing=label_smoothing)


def positive_weights(counts: Sequence[int], num_images: int) -> torch.Tensor:
    """Per-class positive weights ``negatives / positives`` (``BCEWithLogitsLoss``'s
    ``pos_weight`` recipe), 1 for a class without images carrying it."""
    c = torch.tensor(counts, dtype=torch.float32)
    return torch.where(c > 0, (num_images - c) / c.clamp(min=1), torch.ones_like(c))


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
    num_images: int | None = None,
) -> nn.Module:
    """Build the training loss.

    Both kinds take class indices or soft targets (MixUp, CutMix).

    Args:
        kind: "ce" (cross-entropy) or "focal"; "bce" or "asl" for multi-label targets.
        label_smoothing: target smoothing in [0, 1).
        class_counts: when given, classes are weighted by inverse frequency (multi-label:
            positives by ``positive_weights``).
        focal_gamma: the focal loss's gamma.
        num_images: multi-label: build the multi-label loss of ``kind`` ("ce" is then binary
            cross-entropy, "focal" the symmetric focal form of ``AsymmetricLoss``); the
            number of training images, for the positive weights.
    """
    if num_images is not None:
        pos = positive_weights(class_counts, num_images) if class_counts is not None else None
        if kind in ("ce", "bce"):
            return BinaryCrossEntropy(pos_weight=pos, label_smoothing=label_smoothing)
        if kind == "focal":
            return AsymmetricLoss(focal_gamma, focal_gamma, 0.0, pos, label_smoothing)
        if kind == "asl":
            return AsymmetricLoss(4.0, 0.0, 0.05, pos, label_smoothing)
    elif kind in ("bce", "asl"):
        raise ValueError(f"loss {kind!r} is for multi-label data; use 'ce' or 'focal'")
    weight = inverse_frequency_weights(class_counts) if class_counts is not None else None
    if kind == "ce":
        return CrossEntropy(weight=weight, label_smoothing=label_smoothing)
    if kind == "focal":
        return FocalLoss(gamma=focal_gamma, weight=weight, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {kind!r}; choose 'ce', 'focal', 'bce' or 'asl'")
