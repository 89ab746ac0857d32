"""The run both hook-order tests record (``test_hook_order.py`` against a hand-written list,
``test_hook_order_lightning.py`` against Lightning itself): a fit with a 2-batch sanity check and
2 epochs of 2 training and 2 validation batches, then a test, then a predict."""

from __future__ import annotations

from typing import Any

from tests.conftest import StandInData, make_engine
from trainer.engine import Engine
from trainer.hook import HOOK_METHODS, Hook

EPOCHS, BATCHES = 2, 2


def call_name(method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """``setup(fit)`` for the stage methods, the bare method name for the others."""
    if method in ("setup", "teardown"):
        stage = kwargs.get("stage", args[0] if args else None)
        return f"{method}({getattr(stage, 'value', stage)})"  # Lightning's stage is an enum
    return method


class Recorder(Hook):
    """Records the name of every hook call (with the stage for setup and teardown)."""

    def __init__(self) -> None:
        self.calls: list[str] = []


def _recording(method: str) -> Any:
    def fn(self: Recorder, engine: Engine, *args: Any, **kwargs: Any) -> None:
        self.calls.append(call_name(method, args, kwargs))

    return fn


for _m in HOOK_METHODS:
    setattr(Recorder, _m, _recording(_m))


def engine_sequence(*extra: Hook) -> list[str]:
    """The engine's calls for the run above; ``extra`` hooks are listed before the recorder."""
    rec = Recorder()
    data = StandInData.sized(BATCHES * 16, batch_size=16)  # 2 training and 2 validation batches
    engine = make_engine([*extra, rec], data=data, max_epochs=EPOCHS, sanity_steps=BATCHES)
    try:
        engine.fit()
        engine.test()  # no test split: the validation batches
        engine.predict(data.val_loader())
    except RuntimeError:
        pass  # a test that makes a hook fail looks at the calls up to the error
    return rec.calls
