"""ModelEMA: an exponential moving average of a model's weights, kept beside the raw model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """Keeps ``module``, a copy of ``model`` whose weights follow ``model`` by EMA.

    After optimizer update ``n`` (counting from 0) the effective decay is
    ``min(decay, (1 + n) / (10 + n))``, so early weights, which are far from good, fade fast.
    Floating-point parameters and buffers are averaged with ``_foreach_`` ops; integer buffers
    (BatchNorm's ``num_batches_tracked``) are copied.

    Args:
        model: the model being trained (unwrapped, not DDP).
        decay: the long-run decay, e.g. 0.999; closer to 1 averages over more steps.

    Example:
        >>> ema = ModelEMA(model, decay=0.999)
        >>> optimizer.step(); ema.update(model)
        >>> logits = ema.module(images)
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}; use 0 to disable EMA")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.updates = 0
        # (model, ema floats, model floats, ema others, model others): built on the first
        # update, so each step is two foreach calls, not a walk over two state_dicts.
        self._pairs: (
            tuple[
                nn.Module,
                list[torch.Tensor],
                list[torch.Tensor],
                list[torch.Tensor],
                list[torch.Tensor],
            ]
            | None
        ) = None

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, apply: torch.Tensor | None = None) -> None:
        """Move the average towards ``model``.

        Args:
            model: the trained model.
            apply: optional 0-d bool tensor on the device; where False the average stays as it
                was, bit for bit (a lerp by 0), without reading the flag on the host. The
                engine passes False for a skipped non-finite step, after the optimizer skipped
                it and ``NonFiniteGuard`` put the BatchNorm buffers back, so ``model`` then
                holds the finite values of the step before (a NaN would still get through a
                lerp by 0, as 0 x NaN is NaN).
        """
        d = self.current_decay()
        self.updates += 1
        _, ema_float, model_float, ema_other, model_other = self._tensor_lists(model)
        if ema_other:  # BatchNorm's num_batches_tracked: copied, restored by the guard too
            torch._foreach_copy_(ema_other, model_other)
        if not ema_float:
            return
        # ema = d * ema + (1 - d) * model, i.e. a lerp towards the model by (1 - d).
        if apply is None:
            torch._foreach_lerp_(ema_float, model_float, 1.0 - d)
            return
        # The weight as a device tensor (one per dtype), 0 where the step was skipped: as fast
        # as the plain lerp, and no host sync.
        w = apply.to(ema_float[0].device, torch.float32) * (1.0 - d)
        per_dtype = {t.dtype: w.to(t.dtype) for t in ema_float}
        torch._foreach_lerp_(ema_float, model_float, [per_dtype[t.dtype] for t in ema_float])

    def _tensor_lists(
        self, model: nn.Module
    ) -> tuple[
        nn.Module, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]
    ]:
        if self._pairs is None or self._pairs[0] is not model:
            ema_f: list[torch.Tensor] = []
            model_f: list[torch.Tensor] = []
            ema_o: list[torch.Tensor] = []
            model_o: list[torch.Tensor] = []
            for e, m in zip(
                self.module.state_dict(keep_vars=True).values(),
                model.state_dict(keep_vars=True).values(),
                strict=True,
            ):
                # Detached views share storage, and optimizers update in place: they stay valid.
                floating = e.dtype.is_floating_point
                (ema_f if floating else ema_o).append(e.detach())
                (model_f if floating else model_o).append(m.detach())
            self._pairs = (model, ema_f, model_f, ema_o, model_o)
        return self._pairs

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state.get("decay", self.decay))
