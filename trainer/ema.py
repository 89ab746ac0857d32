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
        # Built on the first update (see ``_Pairs``), so each step is a few multi-tensor
        # calls, not a walk over two state_dicts.
        self._pairs: _Pairs | None = None

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, apply: torch.Tensor | None = None) -> None:
        """Move the average towards ``model``.

        Args:
            model: the trained model.
            apply: optional 0-d bool tensor on the device; where False the average stays as it
                was, bit for bit (a step by 0), without reading the flag on the host. The
                engine passes False for a skipped non-finite step, after the optimizer skipped
                it and ``NonFiniteGuard`` put the BatchNorm buffers back, so ``model`` then
                holds the finite values of the step before (a NaN would still get through a
                step by 0, as 0 x NaN is NaN).
        """
        d = self.current_decay()
        self.updates += 1
        if self._pairs is None or self._pairs.model is not model:
            self._pairs = _Pairs(self.module, model)
        pairs = self._pairs
        if pairs.ema_other:  # BatchNorm's num_batches_tracked: copied, restored by the guard too
            torch._foreach_copy_(pairs.ema_other, pairs.model_other)
        if apply is None:  # ema = d * ema + (1 - d) * model, a lerp towards the model
            for ema_t, model_t in pairs.floats:
                torch._foreach_lerp_(ema_t, model_t, 1.0 - d)
            return
        # ema += w * (model - ema), w a 0-d device tensor, 0 where the step was skipped: no
        # host sync, three multi-tensor kernels. (A lerp by a list of 0-d tensor weights is
        # not one: its weights' shapes differ from the tensors', so CUDA runs one per tensor.)
        w = apply.float() * (1.0 - d)
        for ema_t, model_t in pairs.floats:
            delta = torch._foreach_sub(model_t, ema_t)
            torch._foreach_mul_(delta, w.to(ema_t[0].device, ema_t[0].dtype))
            torch._foreach_add_(ema_t, delta)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state.get("decay", self.decay))


class _Pairs:
    """The EMA's tensors beside the model's, as detached views (they share storage, and
    optimizers update in place, so they stay valid): floating ones in one pair of lists per
    dtype (a multi-tensor kernel takes one dtype), the others (integer buffers) apart."""

    def __init__(self, ema: nn.Module, model: nn.Module) -> None:
        self.model = model
        floats: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        self.ema_other: list[torch.Tensor] = []
        self.model_other: list[torch.Tensor] = []
        ema_state = ema.state_dict(keep_vars=True).values()
        model_state = model.state_dict(keep_vars=True).values()
        for e, m in zip(ema_state, model_state, strict=True):
            if e.dtype.is_floating_point:
                es, ms = floats.setdefault(e.dtype, ([], []))
                es.append(e.detach())
                ms.append(m.detach())
            else:
                self.ema_other.append(e.detach())
                self.model_other.append(m.detach())
        self.floats = list(floats.values())
