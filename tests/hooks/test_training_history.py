from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hooks.training_history import TrainingHistoryHook
from tests.conftest import StandInData, assert_survives_unwritable, png_size, run_fit
from trainer.artifacts import ArtifactWriter
from trainer.state import EngineState


def _lines(hook: TrainingHistoryHook, stem: str) -> dict[str, list[float]]:
    ax = hook.figures[stem].axes[0]
    return {
        str(line.get_label()): np.asarray(line.get_ydata(), dtype=float).tolist()
        for line in ax.get_lines()
    }


def test_plots_follow_the_history(tmp_path: Path) -> None:
    hook = TrainingHistoryHook(tmp_path)
    engine = run_fit([hook], epochs=2)
    for stem in ("loss", "accuracy", "lr"):
        w, h = png_size(tmp_path / "plots" / f"{stem}.png")
        assert w >= 500 and h >= 300
    history = engine.state.history
    loss = _lines(hook, "loss")
    assert loss["train"] == pytest.approx([row["train/loss"] for row in history])
    assert loss["val"] == pytest.approx([row["val/loss"] for row in history])
    # 3 classes: no top-5 accuracy in the history, so no top-5 line.
    assert set(_lines(hook, "accuracy")) == {"train top-1", "val top-1"}
    ax = hook.figures["lr"].axes[0]
    assert np.asarray(ax.get_lines()[0].get_xdata()).tolist() == [1, 2]  # epochs counted from 1
    assert hook.figure is hook.figures["loss"]


def test_top5_is_drawn_when_present(tmp_path: Path) -> None:
    data = StandInData(classes=list("abcdef"), train_counts=[3] * 6, val_counts=[2] * 6)
    hook = TrainingHistoryHook(tmp_path)
    run_fit([hook], data, epochs=1)
    acc = _lines(hook, "accuracy")
    assert set(acc) == {"train top-1", "val top-1", "val top-5"}
    assert len(acc["val top-5"]) == 1  # a single epoch still plots, as a marker


def test_nan_and_inf_leave_gaps(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"epoch": 0.0, "lr": 1e-5, "train/loss": math.nan, "val/loss": 2.0, "train/acc": 0.1},
        {"epoch": 1.0, "lr": 1e-3, "train/loss": math.inf, "val/loss": math.nan},
        {"epoch": 2.0, "lr": 1e-4, "train/loss": 1.0, "val/loss": 0.5, "train/acc": 0.6},
    ]
    hook = TrainingHistoryHook(tmp_path)
    engine = SimpleNamespace(state=EngineState(history=rows), artifacts=ArtifactWriter())
    hook.on_train_epoch_end(engine)  # type: ignore[arg-type]
    engine.artifacts.flush()  # the plots are drawn on the artefact writer thread
    loss = _lines(hook, "loss")
    assert [math.isnan(v) for v in loss["train"]] == [True, True, False]
    assert math.isnan(_lines(hook, "accuracy")["train top-1"][1])
    assert hook.figures["lr"].axes[0].get_yscale() == "log"
    for stem in ("loss", "accuracy", "lr"):
        png_size(tmp_path / "plots" / f"{stem}.png")


def test_unwritable_out_dir_warns_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(TrainingHistoryHook, tmp_path, caplog)
