"""The Hook interface: every method is a no-op; override the ones you need.

The engine calls them in Lightning's order (see ``Engine`` for the loop written out)::

    on_fit_start
      [sanity validation: phase "sanity", 2 val batches, same validation hooks]
      for each epoch:
        on_train_epoch_start
          for each batch: on_train_batch_start -> on_before_backward -> on_after_backward
              -> on_before_optimizer_step (only on batches that step) -> on_train_batch_end
          on_validation_start -> on_validation_epoch_start
            for each batch: on_validation_batch_start -> on_validation_batch_end
          on_validation_epoch_end -> on_validation_end
        on_train_epoch_end
        [engine.checkpoint(): state_dict() of each hook, then on_save_checkpoint]
    on_fit_end
    on an error: on_exception, then the error propagates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from trainer.engine import Engine

HOOK_METHODS: tuple[str, ...] = (
    "on_fit_start",
    "on_fit_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_train_batch_end",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_start",
    "on_test_end",
    "on_test_epoch_start",
    "on_test_epoch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "on_exception",
)


class Hook:
    """Base class for everything that watches or steers a run.

    Hooks read what they need from ``engine.state``, ``engine.model``, ``engine.data``; they keep
    no reference to the engine. ``outputs`` in the batch-end methods is the dict the engine
    already computed: ``{"loss", "logits", "targets"}``, detached. Lower ``order`` runs first.

    Example:
        >>> class PrintLoss(Hook):
        ...     def on_train_epoch_end(self, engine):
        ...         print(engine.state.metrics["train/loss"])
    """

    order: int = 50

    def on_fit_start(self, engine: Engine) -> None: ...
    def on_fit_end(self, engine: Engine) -> None: ...
    def on_train_epoch_start(self, engine: Engine) -> None: ...
    def on_train_epoch_end(self, engine: Engine) -> None: ...
    def on_train_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None: ...
    def on_before_backward(self, engine: Engine, loss: torch.Tensor) -> None: ...
    def on_after_backward(self, engine: Engine) -> None: ...
    def on_before_optimizer_step(
        self, engine: Engine, optimizer: torch.optim.Optimizer
    ) -> None: ...
    def on_train_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None: ...
    def on_validation_start(self, engine: Engine) -> None: ...
    def on_validation_end(self, engine: Engine) -> None: ...
    def on_validation_epoch_start(self, engine: Engine) -> None: ...
    def on_validation_epoch_end(self, engine: Engine) -> None: ...
    def on_validation_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None: ...
    def on_validation_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None: ...
    def on_test_start(self, engine: Engine) -> None: ...
    def on_test_end(self, engine: Engine) -> None: ...
    def on_test_epoch_start(self, engine: Engine) -> None: ...
    def on_test_epoch_end(self, engine: Engine) -> None: ...
    def on_test_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None: ...
    def on_test_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None: ...
    def on_save_checkpoint(self, engine: Engine, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, engine: Engine, checkpoint: dict[str, Any]) -> None: ...
    def on_exception(self, engine: Engine, exception: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints (plain Python data and tensors only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    @property
    def name(self) -> str:
        return type(self).__name__
