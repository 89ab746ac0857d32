"""The Hook interface: every method is a no-op; override the ones you need.

The engine calls them in Lightning 2.x's order (see ``Engine`` for the loop written out)::

    fit():
      setup("fit")
      [resume: on_load_checkpoint]
      on_fit_start
        on_sanity_check_start                    (phase "sanity"; skipped when resuming)
          on_validation_start -> on_validation_epoch_start
            for each of 2 batches: on_validation_batch_start -> on_validation_batch_end
          on_validation_epoch_end -> on_validation_end
        on_sanity_check_end
        on_train_start
        for each epoch:
          on_train_epoch_start
            for each batch: on_train_batch_start
                -> on_before_zero_grad (first batch of each accumulation window; then zero_grad)
                -> on_before_backward -> on_after_backward
                -> on_before_optimizer_step (only on batches that step) -> on_train_batch_end
            [validation, as above, phase "val"]
          on_train_epoch_end
          [engine.checkpoint(): state_dict() of each hook, then on_save_checkpoint]
        on_train_end
      on_fit_end
      teardown("fit")
    validate() / test():  setup -> on_{validation,test}_start -> ..._epoch_start
                          -> batches -> ..._epoch_end -> ..._end -> teardown
    predict():            setup("predict") -> on_predict_start -> on_predict_epoch_start
                          -> per batch: on_predict_batch_start -> on_predict_batch_end
                          -> on_predict_epoch_end -> on_predict_end -> teardown("predict")
    on an error in fit: on_exception, then teardown, then the error propagates.

Batch methods get the batch as the model does: ``(images, targets)`` on the device, images
already normalised (predict batches built from files or PIL images are ``(images,)``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from trainer.engine import Engine

log = logging.getLogger("trainer")

HOOK_METHODS: tuple[str, ...] = (
    "setup",
    "teardown",
    "on_fit_start",
    "on_fit_end",
    "on_sanity_check_start",
    "on_sanity_check_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_train_epoch_end",
    "on_train_batch_start",
    "on_before_zero_grad",
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
    "on_predict_start",
    "on_predict_end",
    "on_predict_epoch_start",
    "on_predict_epoch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
    "on_save_checkpoint",
    "on_load_checkpoint",
    "on_exception",
)


class Hook:
    """Base class for everything that watches or steers a run.

    Hooks read what they need from ``engine.state``, ``engine.model``, ``engine.data``; they keep
    no reference to the engine. ``outputs`` in the batch-end methods is the dict the engine
    already computed: ``{"loss", "logits", "targets"}``, detached, plus ``"finite"`` in training
    (a device bool: whether the loss is finite; ``{"logits", "probs"}`` in
    ``on_predict_batch_end``). Lower ``order`` runs first.

    Example:
        >>> class PrintLoss(Hook):
        ...     def on_train_epoch_end(self, engine):
        ...         print(engine.state.metrics["train/loss"])
    """

    order: int = 50

    def setup(self, engine: Engine, stage: str) -> None:
        """Before ``fit``, ``validate``, ``test`` or ``predict``: ``stage`` is "fit",
        "validate", "test" or "predict"."""

    def teardown(self, engine: Engine, stage: str) -> None:
        """After that entry point, also when it raised."""

    def on_fit_start(self, engine: Engine) -> None: ...
    def on_fit_end(self, engine: Engine) -> None: ...
    def on_sanity_check_start(self, engine: Engine) -> None: ...
    def on_sanity_check_end(self, engine: Engine) -> None: ...
    def on_train_start(self, engine: Engine) -> None: ...
    def on_train_end(self, engine: Engine) -> None: ...
    def on_train_epoch_start(self, engine: Engine) -> None: ...
    def on_train_epoch_end(self, engine: Engine) -> None: ...
    def on_train_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None: ...
    def on_before_zero_grad(self, engine: Engine, optimizer: torch.optim.Optimizer) -> None: ...
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
    def on_predict_start(self, engine: Engine) -> None: ...
    def on_predict_end(self, engine: Engine) -> None: ...
    def on_predict_epoch_start(self, engine: Engine) -> None: ...
    def on_predict_epoch_end(self, engine: Engine) -> None: ...
    def on_predict_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None: ...
    def on_predict_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None: ...
    def on_save_checkpoint(self, engine: Engine, checkpoint: dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, engine: Engine, checkpoint: dict[str, Any]) -> None: ...
    def on_exception(self, engine: Engine, exception: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints: plain Python data (dicts, an OrderedDict or Counter too,
        lists, tuples, numbers, strings) and tensors; anything else is refused at the first save."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    @property
    def name(self) -> str:
        return type(self).__name__


def overrides(hook: Hook, method: str) -> bool:
    """Whether ``hook``'s class defines its own ``method`` (not the base's no-op)."""
    return getattr(type(hook), method, None) is not getattr(Hook, method)


def resolve_hook_plan(hooks: Sequence[Hook]) -> dict[str, list[Callable[..., None]]]:
    """For each hook method, the bound methods to call: by ``order``, then list position.

    Methods a hook does not override are left out, so an unused method costs nothing per step.
    """
    for h in hooks:
        if not isinstance(h, Hook):
            raise TypeError(f"hooks must be Hook instances, got {type(h).__name__}")
    ordered = [h for _, h in sorted(enumerate(hooks), key=lambda t: (t[1].order, t[0]))]
    return {m: [getattr(h, m) for h in ordered if overrides(h, m)] for m in HOOK_METHODS}


class HookPlan:
    """The hooks' methods resolved once (see :func:`resolve_hook_plan`), and the one dispatch.

    Args:
        hooks: the run's hooks.
    """

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.methods = resolve_hook_plan(hooks)

    def call(self, method: str, engine: Engine, *args: Any) -> None:
        """Call each hook's ``method`` in order with ``(engine, *args)``; an error raised by
        one of them gets a note naming the hook and the method."""
        for fn in self.methods[method]:
            try:
                fn(engine, *args)
            except Exception as e:
                hook = getattr(fn, "__self__", fn)
                if hasattr(e, "add_note"):
                    e.add_note(f"raised in hook {type(hook).__name__}.{method}")
                raise

    def call_on_exception(self, engine: Engine, error: BaseException) -> None:
        """``on_exception`` of every hook; one that fails is logged, as the original error
        matters more."""
        for fn in self.methods["on_exception"]:
            try:
                fn(engine, error)
            except Exception:
                log.exception("hook %s failed in on_exception", getattr(fn, "__self__", fn))

    @contextlib.contextmanager
    def stage(self, engine: Engine, stage: str) -> Iterator[None]:
        """``setup(stage)``, the body, then ``teardown(stage)``, also when the body raised; a
        teardown that fails then is logged, so the body's error is the one that propagates."""
        self.call("setup", engine, stage)
        try:
            yield
        except BaseException:
            try:
                self.call("teardown", engine, stage)
            except Exception:
                log.exception("a hook failed in teardown(%r) after an error", stage)
            raise
        self.call("teardown", engine, stage)


def describe_hook_plan(hooks: Sequence[Hook]) -> str:
    """The resolved plan as text: order, hook, and the methods it runs."""
    ordered = sorted(enumerate(hooks), key=lambda t: (t[1].order, t[0]))
    lines = ["order  hook                         methods"]
    for _, h in ordered:
        methods = [m for m in HOOK_METHODS if overrides(h, m)]
        lines.append(f"{h.order:>5}  {h.name:<28} {', '.join(methods) or '-'}")
    return "\n".join(lines)


def hook_keys(hooks: Sequence[Hook]) -> dict[str, Hook]:
    """Each hook by the key its state is saved under in checkpoints: its name, then
    ``name#2``, ``name#3`` ... for further hooks of the same class."""
    keys: dict[str, Hook] = {}
    for h in hooks:
        key, n = h.name, 1
        while key in keys:
            n += 1
            key = f"{h.name}#{n}"
        keys[key] = h
    return keys
