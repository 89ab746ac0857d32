from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from tests.conftest import make_engine
from trainer.ema import ModelEMA


def test_ema_matches_hand_computed_reference() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    ref = {k: v.clone().double() for k, v in model.state_dict().items()}
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
            model[1].num_batches_tracked.add_(1)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ref[k] = d * ref[k] + (1 - d) * v.double()
            else:
                ref[k] = v.clone()
        ema.update(model)
    assert ema.updates == 30
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v.to(ref[k].dtype), ref[k], rtol=1e-5, atol=1e-5)
    assert ema.module.state_dict()["1.num_batches_tracked"] == 30


def test_ema_warmup_decay_and_state_roundtrip() -> None:
    ema = ModelEMA(nn.Linear(2, 2), decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.updates = 10_000
    assert ema.current_decay() == pytest.approx(0.999)
    other = ModelEMA(nn.Linear(2, 2), decay=0.999)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 10_000
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(nn.Linear(2, 2), decay=1.5)


def _val_loss(engine: Any, model: nn.Module) -> float:
    """The validation loss of ``model``, computed by hand over the engine's val loader."""
    total, seen = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in engine.data.val_loader():
            x, y = engine.to_device(batch)
            total += float(engine.loss_fn(model(x).float(), y)) * len(y)
            seen += len(y)
    return total / seen


def test_the_engine_updates_ema_each_step_and_validates_and_tests_on_it() -> None:
    engine = make_engine(ema_decay=0.9, max_epochs=1, sanity_steps=0)
    assert engine.ema is not None
    start = copy.deepcopy(engine.ema.module.state_dict())
    engine.fit()
    assert engine.ema.updates == engine.state.step > 0
    now = engine.ema.module.state_dict()
    assert any(not torch.equal(start[k], v) for k, v in now.items())
    ema_loss, raw_loss = _val_loss(engine, engine.ema.module), _val_loss(engine, engine.model)
    assert engine.state.metrics["val/loss"] == pytest.approx(ema_loss, rel=1e-5)
    assert raw_loss != pytest.approx(ema_loss, rel=1e-5)  # the two really differ
    # test() runs the same evaluation loop, on the same weights (no test split: val's images)
    assert engine.test()["test/loss"] == pytest.approx(ema_loss, rel=1e-5)


def test_a_skipped_update_keeps_the_average_bitwise_and_an_applied_one_is_the_lerp() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema, plain = ModelEMA(model, decay=0.9), ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(model)
    plain.update(model)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():  # the step after moves the model, and is skipped
        model[0].weight.add_(1.0)
    ema.update(model, apply=torch.tensor(False))
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    ema.updates = plain.updates  # the same decay for both below
    ema.update(model, apply=torch.tensor(True))  # applied: exactly the flagless update
    plain.update(model)
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, plain.module.state_dict()[k]), k
