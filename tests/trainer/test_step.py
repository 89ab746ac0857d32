"""trainer.step: a step is skipped where the loss or the gradients are not finite, whatever
the optimizer (plain, fused, or under the fp16 scaler); clipping folds the norm's finiteness in."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.step import backward, clip, optimizer_step, unscale


@pytest.mark.parametrize("kind", ["sgd", "fused_adamw", "scaler"])
@pytest.mark.parametrize("finite", [True, False])
def test_a_step_happens_only_when_finite(kind: str, finite: bool) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    if kind == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scaler = torch.amp.GradScaler("cpu") if kind == "scaler" else None
    loss = model(torch.ones(4, 3)).sum() * (1.0 if finite else float("nan"))
    backward(loss, scaler)
    unscale(opt, scaler)
    optimizer_step(opt, scaler, torch.isfinite(loss))
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert changed == [finite, finite]
    if kind == "fused_adamw":
        assert not hasattr(opt, "found_inf")  # the skip flag is handed over for one step only


def test_clip_and_backward() -> None:
    model = nn.Linear(3, 1)
    loss = model(torch.ones(1, 3)).sum() * 100
    backward(loss, None)
    yes = torch.tensor(True)
    assert clip(model, 0.0, yes) is yes  # 0: no clipping
    assert bool(clip(model, 1.0, yes))
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))  # type: ignore[misc]
    assert float(norm) == pytest.approx(1.0, rel=1e-4)
    next(model.parameters()).grad[0, 0] = float("inf")  # type: ignore[index]
    assert not bool(clip(model, 1.0, yes))
    assert not bool(clip(model, 1.0, torch.tensor(False)))
