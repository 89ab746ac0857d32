"""The training process that test_crash_consistency kills: tiny epochs, so saves are frequent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hooks.checkpoint import CheckpointHook
from tests.conftest import StandInData
from trainer.engine import Engine
from trainer.models import SmallCNN


def train_until_killed(out: str, max_epochs: int, ready: Any) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SmallCNN(3, width=32)
    # 32 MB of ballast in every checkpoint: writing files is most of this run's time, so
    # random kills often land inside a save.
    model.register_buffer("ballast", torch.zeros(8_000_000))
    engine = Engine(
        model,
        StandInData.sized(32, batch_size=16),
        max_epochs=max_epochs,
        device="cpu",
        hooks=[CheckpointHook(out, top_k=2)],
        sanity_steps=0,
    )
    resume = out if (Path(out) / "checkpoints" / "last.pt").exists() else None
    ready.set()
    engine.fit(resume=resume)
