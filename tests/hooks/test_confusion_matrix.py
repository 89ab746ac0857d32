from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hooks._artifacts import save_image
from hooks.confusion_matrix import ConfusionMatrixHook, axis_labels, plot_confusion_matrix

from .standin import StandInData, assert_survives_unwritable, png_size, run_fit


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
def test_many_classes_use_indices_and_a_legend(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (n, n))
    counts[0] = 0  # a class with no validation image must not give NaNs
    support = counts.sum(1, keepdims=True)
    norm = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    classes = [f"class $name$ number {i} with a long tail" for i in range(n)]
    image = plot_confusion_matrix(counts, norm, classes, epoch=3)
    save_image(image, tmp_path / "cm.png")
    w, h = png_size(tmp_path / "cm.png")
    assert 400 < w <= 5000 and 300 < h <= 2000
    ticks, legend = axis_labels(classes)
    if n > 30:
        assert ticks[99] == "99" and legend[99].startswith("99: class $name$")
        # The legend column right of the two panels holds dark text pixels.
        right = np.asarray(image.convert("L"))[:, int(0.95 * w) :]
        assert right.min() < 100
    else:
        assert legend == [] and ticks[0].startswith("class $name$")
    # Each cell is filled through the colormap: the darkest count is the darkest blue.
    pixels = np.asarray(image)
    assert (pixels[..., 2] > pixels[..., 0]).any()


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
