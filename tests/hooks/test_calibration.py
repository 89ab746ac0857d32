"""CalibrationHook: the reliability diagram of the latest validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from hooks.calibration import CalibrationHook
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


def test_survives_an_unwritable_run_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(CalibrationHook, tmp_path, caplog)
