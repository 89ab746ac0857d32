from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hooks import plots
from hooks.plots import plot_grid, to_display
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
    for g in hook.fixed_indices:
        # Global index bookkeeping across batches of 5 (the last one short) is right.
        assert torch.equal(rec.epochs[1]["images"][g], data.val_x[g])
        assert rec.epochs[0]["images"][g].dtype == torch.uint8
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


def test_grid_is_framed_by_correctness_with_captions() -> None:
    torch.manual_seed(0)
    images: list[torch.Tensor | None] = [
        torch.randint(0, 256, (3, 40, 24), dtype=torch.uint8) for _ in range(4)
    ]
    images.append(None)  # an image that could not be read: a grey tile
    records = [
        {"index": 10 + i, "true": i % 3, "pred": (i + 1) % 3, "prob": 0.5, "correct": i % 2 == 0}
        for i in range(5)
    ]
    classes = ["a", "b", "a class name far too long to fit under one tile"]
    grid = np.asarray(plot_grid(images, records, classes, title="t"))
    cols = 3  # ceil(sqrt(5))
    for k, rec in enumerate(records):
        x = plots._GAP + (k % cols) * (plots.TILE + plots._GAP)
        y = plots._TITLE + plots._GAP + (k // cols) * (plots._CAPTION + plots.TILE + plots._GAP)
        frame = tuple(grid[y + plots._CAPTION + 1, x + 1])
        assert frame == (plots._GREEN if rec["correct"] else plots._RED)
        assert (grid[y : y + plots._CAPTION, x : x + plots.TILE] != 255).any()  # a caption
    x = plots._GAP + plots.TILE + plots._GAP  # the missing image's tile, centre
    y = plots._TITLE + 2 * plots._GAP + plots._CAPTION + plots.TILE + plots._CAPTION
    assert tuple(grid[y + plots.TILE // 2, x + plots.TILE // 2]) == (128, 128, 128)


def test_normalised_float_batches_are_shown_in_true_colours() -> None:
    data = StandInData(float_images=True)
    shown = to_display(data.val_x[0], data.mean, data.std)
    original = StandInData().val_x[0].permute(1, 2, 0).float().numpy() / 255
    assert shown.shape == (16, 16, 3) and shown.min() >= 0 and shown.max() <= 1
    assert abs(shown - original).max() < 1e-5


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
