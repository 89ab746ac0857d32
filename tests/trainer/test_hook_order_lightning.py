"""The engine's hook sequence against the one Lightning 2.x itself fires for the same run.

Runs only where Lightning is installed: ``pip install -e '.[parity]'`` (CI does).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.trainer.hook_order import BATCHES, EPOCHS, call_name, engine_sequence
from trainer.engine import Engine
from trainer.hook import HOOK_METHODS, Hook
from trainer.models import build_model

pl = pytest.importorskip("lightning.pytorch")

# Lightning warns about loader workers, the missing logger and checkpoint for test(): noise here.
pytestmark = pytest.mark.filterwarnings("ignore")


class Boom(RuntimeError):
    pass


def _recording(method: str, fail_at: str | None) -> Any:
    def fn(self: Any, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append(call_name(method, args, kwargs))
        if method == fail_at:
            raise Boom(method)

    return fn


def _lightning_sequence(fail_at: str | None = None) -> list[str]:
    """Lightning's callback calls for the run of ``tests/trainer/hook_order.py``."""

    class Recorder(pl.Callback):
        def __init__(self) -> None:
            self.calls: list[str] = []

    for m in HOOK_METHODS:
        setattr(Recorder, m, _recording(m, fail_at))

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model("small_cnn", 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self(batch[0])

        def test_step(self, batch: Any, batch_idx: int) -> None:
            self(batch[0])

        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0]).softmax(1)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(BATCHES * 4, 3, 16, 16, generator=g), torch.arange(BATCHES * 4) % 3)
    loader = DataLoader(ds, batch_size=4)
    rec = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        limit_train_batches=BATCHES,
        limit_val_batches=BATCHES,
        limit_test_batches=BATCHES,
        limit_predict_batches=BATCHES,
        num_sanity_val_steps=BATCHES,
        callbacks=[rec],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Module()
    try:
        trainer.fit(model, loader, loader)
        trainer.test(model, loader, verbose=False)
        trainer.predict(model, loader)
    except Boom:
        pass
    return rec.calls


def test_lightning_has_every_method_of_ours() -> None:
    assert [m for m in HOOK_METHODS if not callable(getattr(pl.Callback, m, None))] == []


def test_fit_test_predict_fire_what_lightning_fires() -> None:
    assert engine_sequence() == _lightning_sequence()


def test_after_an_error_teardown_still_runs_unlike_lightning() -> None:
    """The one deliberate difference (README, "Writing a hook"): when the fit raises, Lightning
    2.x skips ``teardown``; the engine calls it, so hooks can release what ``setup`` took."""

    class Fail(Hook):
        order = 60  # after the recorder, as Lightning's recorder records before it raises

        def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
            raise Boom("on_train_batch_end")

    ours = engine_sequence(Fail())
    theirs = _lightning_sequence(fail_at="on_train_batch_end")
    assert theirs[-2:] == ["on_train_batch_end", "on_exception"]
    assert ours == [*theirs, "teardown(fit)"]
