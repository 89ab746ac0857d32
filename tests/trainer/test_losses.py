"""The training losses on class indices and on soft targets (MixUp/CutMix), checked against
a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.losses import CrossEntropy, FocalLoss, build_loss

LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]]
SOFT = [[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]]
WEIGHT = [1.0, 2.0, 0.5]


def by_hand(gamma: float, smoothing: float, weight: list[float] | None) -> float:
    """The focal loss (gamma 0: cross-entropy) of LOGITS against SOFT, written out."""
    total, norm = 0.0, 0.0
    for z, t in zip(LOGITS, SOFT, strict=True):
        e = [math.exp(v) for v in z]
        p = [v / sum(e) for v in e]
        smoothed = [ti * (1 - smoothing) + smoothing / 3 for ti in t]
        if weight is None or gamma > 0:
            ce = -sum(s * math.log(pc) for s, pc in zip(smoothed, p, strict=True))
        else:  # weighted cross-entropy weighs each class's term
            ce = -sum(w * s * math.log(pc) for w, s, pc in zip(weight, smoothed, p, strict=True))
        p_t = sum(ti * pc for ti, pc in zip(t, p, strict=True))
        w = 1.0 if weight is None else sum(ti * wi for ti, wi in zip(t, weight, strict=True))
        term = (1 - p_t) ** gamma * ce
        total += term if (weight is not None and gamma == 0) else term * w
        norm += w
    return total / norm


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weight", [None, WEIGHT])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_soft_targets_match_the_hand_computation(
    gamma: float, smoothing: float, weight: list[float] | None
) -> None:
    w = None if weight is None else torch.tensor(weight)
    loss: torch.nn.Module
    if gamma == 0:
        loss = CrossEntropy(weight=w, label_smoothing=smoothing)
    else:
        loss = FocalLoss(gamma=gamma, weight=w, label_smoothing=smoothing)
    got = loss(torch.tensor(LOGITS), torch.tensor(SOFT))
    assert got.item() == pytest.approx(by_hand(gamma, smoothing, weight), rel=1e-5)


@pytest.mark.parametrize("kind", ["ce", "focal"])
@pytest.mark.parametrize("balanced", [False, True])
def test_a_one_hot_soft_target_gives_the_class_index_loss(kind: str, balanced: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(16, 5)
    target = torch.randint(0, 5, (16,))
    loss = build_loss(kind, label_smoothing=0.1, class_counts=[9, 3, 5, 1, 7] if balanced else None)
    one_hot = torch.nn.functional.one_hot(target, 5).float()
    assert loss(logits, one_hot).item() == pytest.approx(loss(logits, target).item(), rel=1e-5)


def test_class_indices_still_go_through_torch_cross_entropy() -> None:
    logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    w = torch.tensor([1.0, 0.5, 2.0, 1.0])
    expected = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.2)(logits, target)
    assert torch.equal(CrossEntropy(weight=w, label_smoothing=0.2)(logits, target), expected)
