from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hooks.confusion_matrix import ConfusionMatrixHook
from hooks.plots import plot_confusion_matrix, save_png
from tests.conftest import StandInData, assert_survives_unwritable, png_size, run_fit


def test_writes_one_matrix_per_epoch_without_the_sanity_check(
    tmp_path: Path, data: StandInData
) -> None:
    hook = ConfusionMatrixHook(tmp_path)
    engine = run_fit([hook], data, epochs=2)
    folder = tmp_path / "plots" / "confusion_matrix"
    for epoch in (0, 1):
        doc = json.loads((folder / f"epoch_{epoch:03d}.json").read_text())
        m = np.array(doc["matrix"])
        assert doc["classes"] == data.classes
        # Only the real validation pass counts; the 2 sanity batches would add 10 more.
        assert m.sum() == sum(data.class_counts["val"])
        assert m.sum(axis=1).tolist() == data.class_counts["val"]
        norm = np.array(doc["normalized"])
        assert np.allclose(norm.sum(axis=1), 1.0, atol=1e-3)
        w, h = png_size(folder / f"epoch_{epoch:03d}.png")
        assert w > 400 and h > 300
    assert hook.matrix is not None and hook.matrix.device.type == "cpu"
    assert hook.matrix.tolist() == m.tolist()
    # The engine's own accuracy agrees with the hook's matrix.
    assert engine.state.metrics["val/acc"] == pytest.approx(np.trace(m) / m.sum())
    assert hook.figure is not None


@pytest.mark.parametrize("n", [6, 25, 100])
def test_many_classes_use_indices(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (n, n))
    counts[0] = 0  # a class with no validation image must not give NaNs
    classes = [f"class $name$ number {i} with a long tail" for i in range(n)]
    fig = plot_confusion_matrix(counts, classes, "epoch 3")
    save_png(fig, tmp_path / "cm.png")
    w, h = png_size(tmp_path / "cm.png")
    assert 400 < w <= 3200 and 300 < h <= 1700
    counts_ax, recall_ax = fig.axes[0], fig.axes[2]  # each panel is followed by its colour bar
    ticks = [t.get_text() for t in counts_ax.get_xticklabels()]
    if n > 30:
        assert ticks[:3] == ["0", "2", "4"]  # indices, thinned past 60 classes
    else:
        assert ticks[0].startswith(r"class \$name\$") and len(ticks) == n  # mathtext escaped
    # Cells are annotated up to 20 classes only.
    assert bool(counts_ax.texts) == (n <= 20)
    recall = recall_ax.images[0].get_array()
    assert np.isfinite(recall).all() and recall[0].sum() == 0
    rows = counts.sum(axis=1) > 0
    assert np.allclose(np.asarray(recall).sum(axis=1)[rows], 1.0)


def test_unwritable_out_dir_warns_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(ConfusionMatrixHook, tmp_path, caplog)


def test_target_path_being_a_folder_is_only_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "plots" / "confusion_matrix" / "epoch_000.png"
    target.mkdir(parents=True)
    run_fit([ConfusionMatrixHook(tmp_path)], epochs=1)
    assert str(target) in caplog.text
    assert (target.with_suffix(".json")).is_file()
