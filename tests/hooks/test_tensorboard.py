"""TensorBoardHook: the event files hold the scalars, images and hparams; a clear error without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hooks.confusion_matrix import ConfusionMatrixHook
from hooks.sample_visualization import SampleVisualizationHook
from hooks.tensorboard import TensorBoardHook
from tests.conftest import MULTILABEL_METRICS, MultiLabelStandIn, run_fit
from trainer.errors import ConfigError


def test_scalars_images_and_hparams_reach_the_event_file(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hook = TensorBoardHook(tmp_path)
    hooks = [ConfusionMatrixHook(tmp_path), SampleVisualizationHook(tmp_path, num_images=4), hook]
    engine = run_fit(hooks, epochs=2)
    events = EventAccumulator(str(hook.log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    val_acc = [e.value for e in events.Scalars("val/acc")]
    assert val_acc == pytest.approx([row["val/acc"] for row in engine.state.history])
    assert {"confusion_matrix", "samples/fixed", "samples/mistakes"} <= set(tags["images"])
    image = events.Images("confusion_matrix")[-1]
    assert image.step == 2 and image.width > 100 and image.height > 100
    assert "best/val/acc" in tags["scalars"]  # the hparams' metric
    # The hparams session summary sits beside the scalars, not in a subfolder.
    assert not [p for p in hook.log_dir.iterdir() if p.is_dir()]


def test_missing_tensorboard_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes both find_spec and import see no package.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[tensorboard\]'"):
        TensorBoardHook(tmp_path)


def test_missing_at_fit_start_is_the_same_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    hook = TensorBoardHook(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        run_fit([hook], epochs=1)


def test_a_multilabel_run_logs_its_own_metrics_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hook = TensorBoardHook(tmp_path)
    hooks = [ConfusionMatrixHook(tmp_path), SampleVisualizationHook(tmp_path, num_images=4), hook]
    engine = run_fit(hooks, MultiLabelStandIn(), epochs=2)
    events = EventAccumulator(str(hook.log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for tag in MULTILABEL_METRICS:
        assert [e.value for e in events.Scalars(tag)] == pytest.approx(
            [row[tag] for row in engine.state.history]
        ), tag
    assert not [t for t in tags["scalars"] if t.endswith(("/acc_top5", "/balanced_acc", "/ece"))]
    assert "val/acc" not in tags["scalars"]  # multi-class only
    # The per-class 2x2 summary in place of the N x N matrix; no mistakes grid.
    assert set(tags["images"]) == {"confusion_matrix", "samples/fixed"}
    assert [e.step for e in events.Images("confusion_matrix")] == [1, 2]
    assert "best/val/mAP" in tags["scalars"]  # the hparams' metric: the task's monitor
