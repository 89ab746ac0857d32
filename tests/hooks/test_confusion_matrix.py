from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hooks.confusion_matrix import ConfusionMatrixHook
from tests.conftest import (
    StandInData,
    assert_survives_unwritable,
    make_engine,
    png_size,
    run_fit,
)
from tests.hooks.render.test_plots import many_class_matrix


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
        with np.load(folder / f"epoch_{epoch:03d}.npz") as npz:  # the same numbers, compressed
            assert npz["matrix"].tolist() == doc["matrix"] and int(npz["epoch"]) == epoch
            assert npz["classes"].tolist() == data.classes
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


def test_a_thousand_classes_stay_under_a_megabyte_per_epoch(tmp_path: Path) -> None:
    n = 1000
    data = StandInData([f"n{i:08d}" for i in range(n)], [1] * n, [1] * n)
    engine = make_engine([], data)
    counts = many_class_matrix(n, per_class=20)  # the 20 val images per class
    engine.state.phase, engine.state.epoch = "val", 4
    engine.state.confusion_matrix = torch.from_numpy(counts)
    hook = ConfusionMatrixHook(tmp_path)
    hook.on_validation_epoch_end(engine)
    engine.artifacts.close()
    files = sorted((tmp_path / "plots" / "confusion_matrix").iterdir())
    assert [f.name for f in files] == ["epoch_004.npz", "epoch_004.png"]  # no JSON past 50
    assert sum(f.stat().st_size for f in files) <= 1_000_000
    with np.load(files[0]) as npz:
        assert np.array_equal(npz["matrix"], counts) and npz["matrix"].dtype == np.int64
        assert npz["classes"].tolist() == data.classes and int(npz["epoch"]) == 4
    assert png_size(files[1]) == (1400, 700)
    assert hook.figure is not None
    assert hook.figure.axes[1].get_yticklabels()[0].get_text() == "#42 n00000042 (of 20)"
