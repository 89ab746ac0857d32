"""The mechanics of one optimizer step: the fp16 scaler, gradient clipping, and skipping a step
whose loss or gradients are not finite without a host read where the optimizer allows it.

The engine's loop and the LR range test (``trainer.lr_find``) both step through these, so a
fit and the test train alike.

Example:
    >>> backward(loss, scaler)
    >>> unscale(optimizer, scaler)              # hooks and clipping see true gradients
    >>> finite = clip(model, 1.0, finite_flag(loss.detach()))
    >>> optimizer_step(optimizer, scaler, finite)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

Scaler = torch.amp.GradScaler | None


def backward(loss: torch.Tensor, scaler: Scaler) -> None:
    """Backward of ``loss``, scaled first when fp16 training has a ``GradScaler``."""
    if scaler is not None:
        scaler.scale(loss).backward()
    else:
        loss.backward()


def unscale(optimizer: torch.optim.Optimizer, scaler: Scaler) -> None:
    """Divide the gradients by the fp16 scale, so what reads them next sees true gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)


def clip(model: nn.Module, max_norm: float, finite: torch.Tensor) -> torch.Tensor:
    """Clip the gradients to ``max_norm`` (0: no clipping); ``finite`` and-ed with whether
    their norm is finite (a device bool, no host read)."""
    if max_norm <= 0:
        return finite
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm, foreach=True)
    return finite & torch.isfinite(norm)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: Scaler, finite: torch.Tensor) -> None:
    """Step ``optimizer`` unless ``finite`` (a device bool) is False.

    Under a ``GradScaler`` the scaler skips steps with non-finite gradients itself. Fused
    optimizers (the default AdamW on CUDA) skip on the device, through the ``found_inf`` the
    scaler would have given them. Any other optimizer costs one host read per step.
    """
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        opt: Any = optimizer  # grad_scale and found_inf are what GradScaler hands them
        opt.grad_scale, opt.found_inf = None, (~finite).float()
        opt.step()
        del opt.grad_scale, opt.found_inf
    elif finite.item():
        optimizer.step()
