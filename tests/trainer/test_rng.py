"""Random state: saved in checkpoints, restored on resume, so randomness in the step continues."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import pytest
import torch
from torch import nn

from hooks.checkpoint import CheckpointHook
from tests.conftest import KillAfterEpoch, StandInData
from trainer.engine import Engine
from trainer.hook import Hook
from trainer.models import build_model
from trainer.rng import get_rng_state, set_rng_state, torch_seeded


def test_state_round_trip_covers_python_numpy_and_torch() -> None:
    state = get_rng_state()
    drawn = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == drawn


@pytest.mark.parametrize("raises", [False, True])
def test_torch_seeded_draws_from_its_seed_and_gives_the_callers_stream_back(raises: bool) -> None:
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    drawn = []
    for _ in range(2):
        failing = pytest.raises(RuntimeError) if raises else contextlib.nullcontext()
        with failing, torch_seeded(7):
            drawn.append(torch.rand(2))
            if raises:
                raise RuntimeError("the block failed")
    assert torch.equal(drawn[0], drawn[1])  # the block's draws depend on its seed alone
    assert torch.equal(torch.rand(3), expected)  # as if the blocks had not run


def _dropout_engine(out, hooks: list[Hook]) -> Engine:
    """A model whose training step draws random numbers in the main process (dropout)."""
    torch.manual_seed(0)
    data = StandInData.sized(48)
    model = nn.Sequential(build_model("small_cnn", data.num_classes), nn.Dropout(0.5))
    return Engine(model, data, max_epochs=3, device="cpu", hooks=[CheckpointHook(out), *hooks])


def test_resume_continues_the_random_stream(tmp_path) -> None:
    straight = _dropout_engine(tmp_path / "a", [])
    straight.fit()

    with pytest.raises(KeyboardInterrupt):
        _dropout_engine(tmp_path / "b", [KillAfterEpoch(0)]).fit()
    torch.manual_seed(123)  # a new process would start from another random state
    resumed = _dropout_engine(tmp_path / "b", [])
    resumed.fit(resume=tmp_path / "b")
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
