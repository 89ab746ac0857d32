"""The order the engine fires every hook method in, written out by hand (Lightning 2.x's order;
``test_hook_order_lightning.py`` checks it against Lightning itself where it is installed)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.conftest import StandInData, make_engine
from tests.trainer.hook_order import BATCHES, EPOCHS, Recorder, engine_sequence
from trainer.engine import Engine
from trainer.hook import HOOK_METHODS, Hook


def _eval(kind: str, n: int) -> list[str]:
    return (
        [f"on_{kind}_start", f"on_{kind}_epoch_start"]
        + [f"on_{kind}_batch_start", f"on_{kind}_batch_end"] * n
        + [f"on_{kind}_epoch_end", f"on_{kind}_end"]
    )


TRAIN_BATCH = [
    "on_train_batch_start",
    "on_before_zero_grad",  # after the forward, before the backward, as Lightning does
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_train_batch_end",
]
EPOCH = ["on_train_epoch_start", *TRAIN_BATCH * BATCHES, *_eval("validation", BATCHES),
         "on_train_epoch_end"]  # fmt: skip
EXPECTED = [
    "setup(fit)",
    "on_fit_start",
    "on_sanity_check_start",
    *_eval("validation", BATCHES),
    "on_sanity_check_end",
    "on_train_start",
    *EPOCH * EPOCHS,
    "on_train_end",
    "on_fit_end",
    "teardown(fit)",
    "setup(test)",
    *_eval("test", BATCHES),
    "teardown(test)",
    "setup(predict)",
    *_eval("predict", BATCHES),
    "teardown(predict)",
]


def test_fit_test_predict_fire_every_hook_in_lightnings_order() -> None:
    assert engine_sequence() == EXPECTED


def test_the_run_covers_every_method_but_the_checkpoint_and_error_ones() -> None:
    left_out = set(HOOK_METHODS) - {name.split("(")[0] for name in EXPECTED}
    assert left_out == {"on_save_checkpoint", "on_load_checkpoint", "on_exception"}


def test_validate_and_test_run_inside_their_stage() -> None:
    rec = Recorder()
    engine = make_engine([rec], data=StandInData.sized(16, batch_size=16))
    engine.validate()
    assert rec.calls == ["setup(validate)", *_eval("validation", 1), "teardown(validate)"]


def test_no_sanity_check_hooks_without_a_sanity_check() -> None:
    rec = Recorder()
    make_engine([rec], max_epochs=1, sanity_steps=0).fit()
    assert rec.calls[:3] == ["setup(fit)", "on_fit_start", "on_train_start"]


def test_zero_grad_comes_before_the_first_backward_of_each_step() -> None:
    """With accumulate=2 over 5 batches: zeroed on batches 0, 2, 4, after their forward, so the
    last step's gradients are still there when the hook runs, and gone before the backward."""
    seen: list[tuple[int, str, bool]] = []

    class Grads(Hook):
        def _has_grads(self, engine: Engine) -> bool:
            return any(p.grad is not None for p in engine.model.parameters())

        def on_before_zero_grad(self, engine: Engine, optimizer: Any) -> None:
            assert optimizer is engine.optimizer
            seen.append((engine.state.batch_idx, "zero_grad", self._has_grads(engine)))

        def on_before_backward(self, engine: Engine, loss: Any) -> None:
            seen.append((engine.state.batch_idx, "backward", self._has_grads(engine)))

    data = StandInData.sized(80, batch_size=16)  # 5 batches
    engine = make_engine([Grads()], data=data, accumulate=2, max_epochs=1, sanity_steps=0)
    engine.fit()
    assert seen == [
        (0, "zero_grad", False), (0, "backward", False), (1, "backward", True),
        (2, "zero_grad", True), (2, "backward", False), (3, "backward", True),
        (4, "zero_grad", True), (4, "backward", False),
    ]  # fmt: skip
    assert engine.state.step == 3


def test_batch_hooks_get_the_batch_the_model_gets() -> None:
    """On the device, uint8 images normalised with the data's mean and std (as in Lightning,
    where batch hooks see the batch after the transfer)."""
    got: dict[str, Any] = {}

    class Batches(Hook):
        def on_train_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None:
            got.setdefault("train", batch)

        def on_validation_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None:
            got.setdefault("val", batch)

    data = StandInData(sampler=None)
    make_engine([Batches()], data=data, max_epochs=1, sanity_steps=1).fit()
    x, y = got["val"]
    m = torch.tensor(data.mean).view(1, 3, 1, 1)
    s = torch.tensor(data.std).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, (data.val_x[:5].float() / 255 - m) / s, atol=1e-5)
    assert torch.equal(y, data.val_y[:5])
    assert got["train"][0].dtype == torch.float32 and len(got["train"][1]) == 5


def test_teardown_runs_after_an_error_and_its_own_error_does_not_hide_it(caplog) -> None:
    class Fails(Hook):
        def on_train_epoch_start(self, engine: Engine) -> None:
            raise ValueError("the original error")

        def teardown(self, engine: Engine, stage: str) -> None:
            raise RuntimeError("teardown failed too")

    rec = Recorder()
    with pytest.raises(ValueError, match="the original error"):
        make_engine([rec, Fails()], max_epochs=1, sanity_steps=0).fit()
    assert rec.calls[-2:] == ["on_exception", "teardown(fit)"]
    assert "teardown('fit')" in caplog.text
