"""On a CUDA machine: the training step, with the default hooks, never waits for the GPU.

CUDA's sync debug mode raises on any synchronising call (``.item()``, ``.cpu()``, ``bool(t)``,
``bincount`` ...), so this checks the real device path. Skipped where there is no CUDA GPU;
the CPU stand-in is ``test_engine.py::test_no_host_reads_inside_training_steps``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hooks import default_hooks
from hooks.progress_bar import ProgressBarHook
from tests.conftest import StandInData
from trainer.engine import Engine
from trainer.hook import Hook
from trainer.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class _SyncWindow(Hook):
    """Turns sync errors on at the first batch-start call and off after the last batch-end."""

    def __init__(self, order: int, on: bool) -> None:
        self.order, self.on = order, on
        self.batches = 0

    def on_train_batch_start(self, engine, batch, batch_idx) -> None:
        if self.on:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, engine, outputs, batch, batch_idx) -> None:
        if not self.on:
            torch.cuda.set_sync_debug_mode(0)
            self.batches += 1


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "32"])
def test_no_sync_inside_cuda_training_steps(tmp_path: Path, precision: str) -> None:
    data = StandInData.sized(96, num_classes=6, batch_size=16)
    hooks = [h for h in default_hooks(tmp_path, export=False) if not isinstance(h, ProgressBarHook)]
    end = _SyncWindow(10_000, on=False)
    hooks += [_SyncWindow(-10_000, on=True), end, ProgressBarHook(refresh_every=10_000)]
    engine = Engine(
        build_model("small_cnn", 6),
        data,
        max_epochs=2,
        device="cuda",
        precision=precision,
        ema_decay=0.99,
        grad_clip=1.0,
        hooks=hooks,
    )
    try:
        engine.fit()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert end.batches == 2 * 6
