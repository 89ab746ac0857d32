"""MixUp and CutMix on the device (trainer.data.mix): soft targets, each image's own label
dominant, drawn from (seed, epoch, batch) so resume is exact, and nothing read on the host."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch

from hooks.checkpoint import CheckpointHook
from tests.conftest import KillAfterEpoch, StandInData, make_engine
from trainer.data.mix import BatchMix
from trainer.hook import Hook
from trainer.losses import build_loss

NAMES = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__", "numpy")


def batch(n: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 12, 10, generator=g)
    y = torch.arange(n) % classes  # neighbours always differ
    return x, y


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_soft_targets_match_the_mixed_images(kind: str) -> None:
    x, y = batch()
    mix = BatchMix(4, **{kind: 1.0}, seed=3)  # type: ignore[arg-type]
    for step in range(20):
        mixed, soft = mix(x, y, (0, step))
        assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
        lam = soft[torch.arange(8), y]
        assert torch.all(lam >= 0.5)  # the image's own label dominates its mix
        assert torch.equal(soft.argmax(1), y) or torch.any(lam == 0.5)
        other = x.roll(1, 0)
        if kind == "mixup":
            assert torch.allclose(mixed, x * lam[0] + other * (1 - lam[0]), atol=1e-6)
        else:  # each pixel is its own or its neighbour's, in the share the target says
            from_other = (mixed == other) & (mixed != x)
            assert torch.equal(mixed, torch.where(from_other, other, x))
            share = from_other[:, 0].float().mean((1, 2))
            assert torch.allclose(share, 1 - lam, atol=1e-6)


def test_a_step_mixes_the_same_under_the_same_key_only() -> None:
    x, y = batch()
    mix = BatchMix(4, mixup=0.4, cutmix=1.0, seed=0)
    a = mix(x, y, (2, 5))
    assert all(torch.equal(u, v) for u, v in zip(a, mix(x, y, (2, 5)), strict=True))
    kinds = set()
    for step in range(30):
        _, soft = mix(x, y, (2, step))
        kinds.add(round(float(soft[0, y[0]]), 6))
    assert len(kinds) > 10  # lambda changes from step to step
    other_seed = BatchMix(4, mixup=0.4, cutmix=1.0, seed=1)(x, y, (2, 5))
    assert not torch.equal(a[1], other_seed[1])


def test_mixing_reads_nothing_back_from_the_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    for name in NAMES:
        real = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *a: Any, _real: Any = real, _n: str = name, **k: Any) -> Any:
            if "trainer/data/mix" in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                reads.append(_n)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    x, y = batch()
    mix = BatchMix(4, mixup=0.2, cutmix=1.0, seed=0)
    for step in range(10):
        mix(x, y, (0, step))
    assert reads == []


def test_training_steps_with_mixing_and_a_weighted_soft_loss_read_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine's step with BatchMix and the focal loss on soft targets with class weights:
    no tensor read on the host between on_train_batch_start and on_train_batch_end."""
    state = {"on": False, "reads": 0}

    class Window(Hook):
        order = -(10**9)

        def on_train_batch_start(self, engine: Any, batch: Any, batch_idx: int) -> None:
            state["on"] = True

    class Close(Hook):
        order = 10**9

        def on_train_batch_end(self, engine: Any, outputs: Any, batch: Any, i: int) -> None:
            state["on"] = False

    for name in NAMES:
        real = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *a: Any, _real: Any = real, **k: Any) -> Any:
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if state["on"] and "torch/optim" not in caller:  # optim's host step counters
                state["reads"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    loss = build_loss("focal", label_smoothing=0.1, class_counts=[5, 3, 2])
    engine = make_engine([Window(), Close()], data=mixing_data(), loss=loss, ema_decay=0.9)
    engine.fit()
    assert engine.state.step > 0 and state["reads"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mixing_on_cuda_never_syncs() -> None:
    x, y = (t.cuda() for t in batch())
    mix = BatchMix(4, mixup=0.2, cutmix=1.0, seed=0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(10):
            mixed, soft = mix(x, y, (0, step))
            loss = build_loss("focal", label_smoothing=0.1, class_counts=[3, 2, 2, 1]).cuda()
            loss(torch.zeros_like(soft), soft)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert mixed.device.type == "cuda"


def mixing_data() -> StandInData:
    data = StandInData.sized(64)
    data.batch_mix = BatchMix(data.num_classes, mixup=0.4, cutmix=1.0, seed=0)  # type: ignore[attr-defined]
    return data


def test_the_engine_trains_on_mixed_batches_and_counts_the_dominant_label() -> None:
    seen: list[torch.Tensor] = []

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(target)
        return build_loss("ce", label_smoothing=0.1)(logits, target)

    engine = make_engine(data=mixing_data(), loss=loss, max_epochs=1, sanity_steps=0)
    engine.fit()
    train_targets = [t for t in seen if t.is_floating_point()]
    assert train_targets and all(t.shape[1] == 3 for t in train_targets)  # soft in training
    assert any(not t.is_floating_point() for t in seen)  # class indices in validation
    row = engine.state.history[0]
    assert 0.0 <= row["train/acc"] <= 1.0 and row["train/loss"] == row["train/loss"]


def test_resume_with_mixing_is_bitwise_equal(tmp_path: Any) -> None:
    kwargs: dict[str, Any] = {"max_epochs": 3, "ema_decay": 0.9}
    straight = make_engine([CheckpointHook(tmp_path / "a")], data=mixing_data(), **kwargs)
    straight.fit()
    first = make_engine(
        [CheckpointHook(tmp_path / "b"), KillAfterEpoch(0)], data=mixing_data(), **kwargs
    )
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    torch.manual_seed(123)
    resumed = make_engine([CheckpointHook(tmp_path / "b")], data=mixing_data(), **kwargs)
    resumed.fit(resume=tmp_path / "b")
    for (k, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    loss = [r["train/loss"] for r in straight.state.history]
    assert loss == [r["train/loss"] for r in resumed.state.history]


def test_a_nan_loss_on_a_mixed_batch_is_skipped_by_the_guard() -> None:
    from tests.trainer.test_reliability import NaNAt

    engine = make_engine(data=mixing_data(), loss=NaNAt({3}), max_epochs=1, ema_decay=0.9)
    engine.fit()
    assert engine.state.history[0]["train/skipped_steps"] == 1
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())
    assert all(torch.isfinite(p).all() for p in engine.ema.module.parameters())  # type: ignore[union-attr]
