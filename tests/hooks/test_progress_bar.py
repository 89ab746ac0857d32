"""ProgressBarHook with validation inside the epoch (--val-every)."""

from __future__ import annotations

from typing import Any

import pytest

from hooks.progress_bar import ProgressBarHook
from tests.conftest import make_engine
from trainer.engine import Engine
from trainer.hook import Hook


def test_a_mid_epoch_check_keeps_the_epochs_bar_and_prints_a_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bar = ProgressBarHook(disable=False)
    seen: list[tuple[str, int, int]] = []

    class Watch(Hook):
        order = 71  # after the bar's update

        def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
            seen.append((bar.bar.desc, bar.bar.n, bar.bar.total))

    make_engine([bar, Watch()], max_epochs=1, val_every=0.5).fit()  # 4 batches, check after 2
    assert seen == [("epoch 1/1", i, 4) for i in range(1, 5)]
    err = capsys.readouterr().err
    assert "  step 2  val/loss" in err and "val/macro_f1" in err
