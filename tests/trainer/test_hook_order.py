"""The order the engine fires every hook method in, written out by hand (Lightning 2.x's order;
``test_hook_order_lightning.py`` checks it against Lightning itself where it is installed)."""

from __future__ import annotations

from tests.trainer.hook_order import BATCHES, EPOCHS, engine_sequence
from trainer.hook import HOOK_METHODS


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
