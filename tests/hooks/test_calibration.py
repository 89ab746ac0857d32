"""CalibrationHook and plot_reliability: the reliability diagram of the latest validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hooks.calibration import CalibrationHook
from hooks.plots import plot_reliability
from tests.conftest import StandInData, assert_survives_unwritable, png_size, run_fit


def test_diagram_of_the_engines_bins_with_the_ece_in_its_title(
    tmp_path: Path, data: StandInData
) -> None:
    hook = CalibrationHook(tmp_path)
    engine = run_fit([hook], data, epochs=2)
    w, h = png_size(tmp_path / "plots" / "reliability.png")
    assert w >= 400 and h >= 400
    bins = engine.state.calibration
    assert bins is not None and bins.shape == (3, 16)
    assert bins[0].sum() == sum(data.class_counts["val"])  # every validation image, once
    assert hook.figure is not None
    top, bottom = hook.figure.axes
    assert f"ECE {engine.state.history[-1]['val/ece']:.3f}" in top.get_title()
    assert "epoch 2" in top.get_title()
    # The count panel holds the images per bin (the exactly-1 bin joined to the last).
    counts = [p.get_height() for p in bottom.patches]
    assert len(counts) == 15 and sum(counts) == sum(data.class_counts["val"])


def test_bars_are_accuracy_per_bin_and_the_gap_to_confidence() -> None:
    bins = np.zeros((3, 16))
    bins[:, 12] = [10, 8.25, 5]  # 10 images at confidence ~0.825, 5 right: overconfident
    bins[:, 15] = [2, 2.0, 2]  # confidence exactly 1, both right: drawn in the last bin
    fig = plot_reliability(bins, "test")
    top, bottom = fig.axes
    accuracy = [p for p in top.patches if p.get_fill()]
    gaps = [p for p in top.patches if not p.get_fill()]
    assert [round(p.get_height(), 6) for p in accuracy] == [0.5, 1.0]
    assert [round(p.get_height(), 6) for p in gaps] == [0.325, 0.0]
    assert [p.get_height() for p in bottom.patches][12:] == [10, 0, 2]


def test_survives_an_unwritable_run_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(CalibrationHook, tmp_path, caplog)
