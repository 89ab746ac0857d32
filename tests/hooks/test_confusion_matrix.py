from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hooks.confusion_matrix import ConfusionMatrixHook
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
