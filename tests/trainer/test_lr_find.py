"""The LR range test: an exponential ramp, a smoothed loss, a stop on divergence, the steepest
descent as the suggestion, and an engine left exactly as it was."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import StandInData, make_engine
from trainer.data import ImageFolderData
from trainer.errors import ConfigError
from trainer.lr_find import lr_find, suggest_lr
from trainer.rng import get_rng_state


def test_ramp_is_exponential_smoothed_and_stops_when_the_loss_diverges() -> None:
    engine = make_engine(data=StandInData(batch_size=4))  # 6 batches: the loader is cycled
    result = lr_find(engine, min_lr=1e-4, max_lr=1e4, num_steps=60)
    assert result.diverged and 3 < len(result.lrs) < 60
    assert result.lrs[0] == pytest.approx(1e-4)
    steps = np.diff(np.log(result.lrs))
    assert np.allclose(steps, math.log(1e8) / 59)  # the ramp of 60 steps, cut short
    last, before = result.smoothed[-1], min(result.smoothed[:-1])
    assert not math.isfinite(last) or last > 4 * before  # stopped at the first divergence
    assert all(s <= 4 * min(result.smoothed[: i + 1]) for i, s in enumerate(result.smoothed[:-1]))
    # The smoothed loss is the bias-corrected moving average of the raw one.
    avg = 0.0
    for i, (loss, smooth) in enumerate(zip(result.losses, result.smoothed, strict=True)):
        avg = 0.98 * avg + 0.02 * loss
        assert smooth == pytest.approx(avg / (1 - 0.98 ** (i + 1)))
    assert result.suggestion in result.lrs[10:-1]
    assert [r["lr"] for r in result.rows()] == result.lrs


def test_a_full_ramp_runs_every_step() -> None:
    result = lr_find(make_engine(), min_lr=1e-6, max_lr=1e-4, num_steps=12, skip_begin=2)
    assert not result.diverged and len(result.lrs) == 12
    assert result.lrs[-1] == pytest.approx(1e-4)


def test_suggestion_is_the_steepest_descent_of_the_smoothed_loss() -> None:
    lrs = np.logspace(-6, 0, 61).tolist()
    # Falls fastest at lr = 1e-3, flat at both ends; a spike in the skipped first points.
    loss = [1 - math.tanh(2 * (math.log10(lr) + 3)) for lr in lrs]
    loss[0] = 50.0
    assert suggest_lr(lrs, loss) == pytest.approx(1e-3)
    loss[40] = math.nan  # non-finite points are left out
    assert suggest_lr(lrs, loss) == pytest.approx(1e-3)
    assert suggest_lr(lrs[:13], loss[:13]) is None  # 2 points left after skipping 10 + 1


def snapshot(engine: Any) -> dict[str, Any]:
    return {
        "model": {k: v.clone() for k, v in engine.model.state_dict().items()},
        "optimizer": _clone(engine.optimizer.state_dict()),
        "scheduler": engine.scheduler.state_dict(),
        "sampler": engine.train_loader.sampler.state_dict(),
        "rng": get_rng_state(),
        "grads": [p.grad for p in engine.model.parameters()],
        "training": engine.model.training,
        "state": engine.state.state_dict(),
        "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,
    }


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_engine_is_put_back_exactly() -> None:
    engine = make_engine(max_epochs=1, ema_decay=0.9, precision="16-mixed")
    engine.fit()  # the optimizer has state, BatchNorm has statistics, the sampler has moved
    engine.model.eval()
    before = snapshot(engine)
    bn = next(m for m in engine.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.running_mean is not None and bn.num_batches_tracked is not None
    mean, tracked = bn.running_mean.clone(), int(bn.num_batches_tracked)
    result = lr_find(engine, min_lr=1e-5, max_lr=1.0, num_steps=15, skip_begin=2)
    assert len(result.lrs) >= 3  # it did train: weights and statistics moved meanwhile
    assert before["scaler"] is not None and before["optimizer"]["state"]
    assert_same(before, snapshot(engine))
    assert torch.equal(bn.running_mean, mean) and int(bn.num_batches_tracked) == tracked
    assert [g["lr"] for g in engine.optimizer.param_groups] == [
        g["lr"] for g in before["optimizer"]["param_groups"]
    ]


def test_a_fit_after_the_test_is_the_fit_without_it() -> None:
    plain, tested = make_engine(), make_engine()
    lr_find(tested, min_lr=1e-5, max_lr=10.0, num_steps=20, skip_begin=2)
    for engine in (plain, tested):
        engine.fit()
    strip = [{k: v for k, v in row.items() if "time" not in k and "img_s" not in k}
             for row in plain.state.history]  # fmt: skip
    assert strip == [{k: v for k, v in row.items() if "time" not in k and "img_s" not in k}
                     for row in tested.state.history]  # fmt: skip
    assert_same(plain.model.state_dict(), tested.model.state_dict())
    assert_same(plain.optimizer.state_dict(), tested.optimizer.state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [{"min_lr": 0.0}, {"min_lr": 1.0, "max_lr": 0.1}, {"num_steps": 1}, {"diverge": 1.0}],
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="LR range test"):
        lr_find(make_engine(), **kwargs)


def test_an_image_folder_loader_is_put_back(tiny_tree: Path) -> None:
    data = ImageFolderData(tiny_tree, img_size=16, batch_size=4, workers=0, sampler="balanced")
    engine = make_engine(data=data)  # type: ignore[arg-type]
    loader = engine.train_loader
    generator, sampler = loader.generator.get_state(), loader.sampler.state_dict()
    lr_find(engine, min_lr=1e-5, max_lr=1.0, num_steps=12, skip_begin=2)
    assert torch.equal(loader.generator.get_state(), generator)  # it seeds the loader's workers
    assert loader.sampler.state_dict() == sampler
