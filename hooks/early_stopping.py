"""EarlyStoppingHook: stop when a monitored metric has not improved for ``patience`` epochs."""

from __future__ import annotations

import logging
from collections.abc import Sized
from typing import TYPE_CHECKING, Any

from trainer.errors import ConfigError
from trainer.hook import Hook
from trainer.metrics import is_better

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")


class EarlyStoppingHook(Hook):
    """Sets ``engine.state.should_stop`` after ``patience`` epochs without improvement.

    Args:
        monitor: metric in ``engine.state.metrics``, e.g. "val/loss"; None: the engine's
            (its task's metric unless told otherwise: val/acc, multi-label val/mAP).
        patience: epochs without improvement to tolerate.
        min_delta: an improvement must beat the best by more than this.
        mode: "max" (higher is better) or "min"; None: the engine's.

    Example:
        >>> Engine(model, data, hooks=[EarlyStoppingHook("val/loss", patience=5, mode="min")])
    """

    order = 80

    def __init__(
        self,
        monitor: str | None = None,
        patience: int = 5,
        min_delta: float = 0.0,
        mode: str | None = None,
    ) -> None:
        if mode not in ("max", "min", None):
            raise ValueError(f"EarlyStoppingHook mode must be 'max' or 'min', got {mode!r}")
        if patience < 1:
            raise ValueError(f"EarlyStoppingHook patience must be >= 1, got {patience}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: float | None = None
        self.wait = 0

    def on_fit_start(self, engine: Engine) -> None:
        loader: Any = getattr(engine, "val_loader", None)
        if loader is None or (isinstance(loader, Sized) and len(loader) == 0):
            raise ConfigError(
                f"early stopping watches {self.monitor or engine.monitor} on the validation "
                "images, but this data has none (--val-fraction 0, or no val/ folder). Keep a "
                "validation split, or drop --early-stopping."
            )

    def on_validation_end(self, engine: Engine) -> None:
        if engine.state.phase != "val":
            return
        monitor, mode = self.monitor or engine.monitor, self.mode or engine.mode
        value = engine.state.metrics.get(monitor)
        if value is None:
            raise ConfigError(
                f"--monitor {monitor}: early stopping watches a metric this run does not have; "
                f"it has {', '.join(sorted(engine.state.metrics))}. Pass one of those."
            )
        if is_better(value, self.best, mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            engine.state.should_stop = True
            engine.state.stop_reason = (
                f"early stopping: {monitor} did not improve for {self.patience} epochs "
                f"(best {self.best:.4g})"
                if self.best is not None
                else "early stopping"
            )
            log.info(engine.state.stop_reason)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
