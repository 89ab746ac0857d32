from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hooks.sample_visualization import SampleVisualizationHook, pick_stratified
from tests.conftest import StandInData, assert_survives_unwritable, png_size, run_fit
from trainer.engine import Engine
from trainer.hook import Hook


class Recorder(Hook):
    """Copies what the visualisation hook holds after each validation (it runs later)."""

    order = 60

    def __init__(self, hook: SampleVisualizationHook) -> None:
        self.hook = hook
        self.epochs: list[dict[str, Any]] = []
        self.during_sanity: list[Any] = []

    def on_validation_epoch_end(self, engine: Engine) -> None:
        h = self.hook
        if engine.state.phase == "sanity":
            self.during_sanity.append((list(h.samples), list(h.mistakes), h.figure))
            return
        self.epochs.append({
            "indices": [s["index"] for s in h.samples],
            "images": {g: img.clone() for g, img in h.fixed_images.items()},
        })  # fmt: skip


def _predictions(engine: Engine, data: StandInData) -> tuple[torch.Tensor, torch.Tensor]:
    """What the final model predicts on the validation set (a test may run a forward pass)."""
    model = engine.eval_model.eval()
    m = torch.tensor(data.mean).view(1, 3, 1, 1)
    s = torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        probs = model((data.val_x.float() / 255 - m) / s).softmax(1)
    return probs.max(1)


def test_fixed_images_and_mistakes(tmp_path: Path, data: StandInData) -> None:
    # Shifted validation labels: the model learns the training set, so it gets these wrong.
    data.val_y = data.val_y.roll(4)
    data.val_samples = [(p, int(t)) for (p, _), t in zip(data.val_samples, data.val_y, strict=True)]
    hook = SampleVisualizationHook(tmp_path, num_images=6, seed=3)
    rec = Recorder(hook)
    engine = run_fit([hook, rec], data, epochs=2)
    folder = tmp_path / "plots" / "samples"
    for epoch in (0, 1):
        for kind in ("fixed", "mistakes"):
            w, h = png_size(folder / f"epoch_{epoch:03d}_{kind}.png")
            assert w >= 300 and h >= 250
    assert rec.during_sanity == [([], [], None)]  # nothing drawn during the sanity check
    # The same images, in the same order, with the same pixels, every epoch.
    assert rec.epochs[0]["indices"] == rec.epochs[1]["indices"] == hook.fixed_indices
    assert len(hook.fixed_indices) == 6
    assert {data.val_y[g].item() for g in hook.fixed_indices} == {0, 1, 2}  # stratified
    m = torch.tensor(data.mean).view(3, 1, 1)
    sd = torch.tensor(data.std).view(3, 1, 1)
    for g in hook.fixed_indices:
        # Global index bookkeeping across batches of 5 (the last one short) is right. The
        # batch hooks get normalised images (as the model does): undone, they are the pixels.
        pixels = ((rec.epochs[1]["images"][g] * sd + m) * 255).round().to(torch.uint8)
        assert torch.equal(pixels, data.val_x[g])
    conf, pred = _predictions(engine, data)
    for s in hook.samples:
        assert s["true"] == data.val_y[s["index"]].item()
        assert s["pred"] == pred[s["index"]].item()
        assert s["prob"] == pytest.approx(conf[s["index"]].item(), abs=1e-3)
        assert s["correct"] == (s["pred"] == s["true"])
    wrong = (pred != data.val_y).nonzero().flatten().tolist()
    expected = sorted(wrong, key=lambda i: -conf[i].item())[:6]
    assert len(expected) >= 3
    assert [m["index"] for m in hook.mistakes] == expected
    assert all(not m["correct"] for m in hook.mistakes)
    assert hook.figure is not None


def test_float_run_and_more_images_than_the_val_set(tmp_path: Path) -> None:
    hook = SampleVisualizationHook(tmp_path, num_images=50)
    run_fit([hook], StandInData(float_images=True), epochs=1)
    assert sorted(hook.fixed_indices) == list(range(12))
    assert len(hook.samples) == 12
    png_size(tmp_path / "plots" / "samples" / "epoch_000_fixed.png")


def test_pick_stratified_takes_classes_in_turn() -> None:
    targets = [0] * 10 + [1] * 2 + [2] * 10
    picked = pick_stratified(targets, 7, seed=0)
    by_class = [targets[i] for i in picked]
    assert by_class == [0, 0, 0, 1, 1, 2, 2] or by_class == [0, 0, 1, 1, 2, 2, 2]
    assert picked == pick_stratified(targets, 7, seed=0)
    assert picked != pick_stratified(targets, 7, seed=1)


def test_unwritable_out_dir_warns_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(SampleVisualizationHook, tmp_path, caplog)
