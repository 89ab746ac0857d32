"""EarlyStoppingHook: stop when a monitored metric has not improved for ``patience`` epochs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from trainer.hook import Hook
from trainer.metrics import is_better

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")


class EarlyStoppingHook(Hook):
    """Sets ``engine.state.should_stop`` after ``patience`` epochs without improvement.

    Args:
        monitor: metric in ``engine.state.metrics``, e.g. "val/loss".
        patience: epochs without improvement to tolerate.
        min_delta: an improvement must beat the best by more than this.
        mode: "max" (higher is better) or "min".

    Example:
        >>> Engine(model, data, hooks=[EarlyStoppingHook("val/loss", patience=5, mode="min")])
    """

    order = 80

    def __init__(
        self,
        monitor: str = "val/acc",
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str = "max",
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"EarlyStoppingHook mode must be 'max' or 'min', got {mode!r}")
        if patience < 1:
            raise ValueError(f"EarlyStoppingHook patience must be >= 1, got {patience}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: float | None = None
        self.wait = 0

    def on_validation_end(self, engine: Engine) -> None:
        if engine.state.phase != "val":
            return
        value = engine.state.metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"EarlyStoppingHook monitors {self.monitor!r}, which the run does not produce; "
                f"available: {sorted(engine.state.metrics)}"
            )
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            engine.state.should_stop = True
            engine.state.stop_reason = (
                f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                f"(best {self.best:.4g})"
                if self.best is not None
                else "early stopping"
            )
            log.info(engine.state.stop_reason)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
