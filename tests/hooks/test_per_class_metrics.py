"""PerClassMetricsHook: per_class.csv, one row per class at every validation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hooks.checkpoint import CheckpointHook
from hooks.per_class_metrics import HEADER, PerClassMetricsHook
from hooks.render.csv_log import CsvLog
from tests.conftest import (
    KillAfterEpoch,
    StandInData,
    assert_survives_unwritable,
    make_engine,
    run_fit,
)
from trainer.metrics import class_metrics


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        return list(reader)


def test_rows_per_epoch_and_class_from_the_engines_confusion_matrix(tmp_path: Path) -> None:
    # Classes a and e look alike (same brightness): the model confuses them.
    data = StandInData(classes=list("abcde"), train_counts=[6] * 5, val_counts=[5, 4, 3, 2, 4])
    engine = run_fit([PerClassMetricsHook(tmp_path)], data, epochs=2)
    rows = _read(tmp_path / "per_class.csv")
    assert len(rows) == 2 * 5  # the sanity check writes none
    last = rows[5:]
    assert [(r["epoch"], r["class_index"], r["class"]) for r in last] == [
        ("1", str(i), c) for i, c in enumerate("abcde")
    ]
    steps = [str(int(h["step"])) for h in engine.state.history for _ in range(5)]
    assert [r["step"] for r in rows] == steps
    assert engine.state.confusion_matrix is not None
    expected = class_metrics(engine.state.confusion_matrix)  # the last validation's
    assert not expected["precision"].equal(expected["recall"])  # a test that can tell them apart
    for key in ("accuracy", "precision", "recall", "f1"):
        assert [float(r[key]) for r in last] == pytest.approx(expected[key].tolist(), abs=1e-6)
    assert [int(r["support"]) for r in last] == [5, 4, 3, 2, 4]
    # metrics.csv's macro-F1 and balanced accuracy are these columns' means.
    final = engine.state.history[-1]
    assert final["val/macro_f1"] == pytest.approx(expected["f1"].mean().item())
    assert final["val/balanced_acc"] == pytest.approx(expected["recall"].mean().item())


def test_class_names_are_data_not_syntax(tmp_path: Path) -> None:
    names = ['a,"b"', "naïve\ncat", "=1+1"]
    data = StandInData(classes=names, train_counts=[4, 4, 4], val_counts=[2, 2, 2])
    run_fit([PerClassMetricsHook(tmp_path)], data, epochs=1)
    assert [r["class"] for r in _read(tmp_path / "per_class.csv")] == names


def test_a_resume_drops_the_rows_after_its_checkpoint(tmp_path: Path) -> None:
    """Rows of the epoch the killed run did not finish are written once, by the resumed run."""
    straight = tmp_path / "straight"
    make_engine([PerClassMetricsHook(straight)], max_epochs=3, val_every=0.5).fit()
    resumed = tmp_path / "resumed"
    hooks = [PerClassMetricsHook(resumed), CheckpointHook(resumed), KillAfterEpoch(0)]
    with pytest.raises(KeyboardInterrupt):
        make_engine(hooks, max_epochs=3, val_every=0.5).fit()
    # As if killed later, in epoch 2: its mid-epoch rows are on disk, last.pt is of epoch 1.
    with (resumed / "per_class.csv").open("a", encoding="utf-8") as f:
        f.write("1,6,0,c0,0.5,0.5,0.5,0.5,21\n1,6,1,c1,0.5,0.")  # the last one cut short
    again = [PerClassMetricsHook(resumed), CheckpointHook(resumed)]
    make_engine(again, max_epochs=3, val_every=0.5).fit(resume=resumed)
    rows = _read(resumed / "per_class.csv")
    assert [r["step"] for r in rows] == [r["step"] for r in _read(straight / "per_class.csv")]
    assert [r["step"] for r in rows][::3] == ["2", "4", "6", "8", "10", "12"]


def test_csv_log_keeps_whole_rows_up_to_the_step(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    # A killed run's last row, "12,d", cut short to "1": its step would pass for 1.
    path.write_text("step,x\n1,a\n2,b\n3,c\n1", encoding="utf-8")
    log = CsvLog(path, ["step", "x"])
    log.start(step=2)
    assert path.read_text(encoding="utf-8").splitlines() == ["step,x", "1,a", "2,b"]
    log.start(step=0)  # a new run in the folder
    assert path.read_text(encoding="utf-8").splitlines() == ["step,x"]


def test_survives_an_unwritable_run_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(PerClassMetricsHook, tmp_path, caplog)


def test_a_linked_log_file_is_replaced_not_written_through(tmp_path: Path) -> None:
    # per_class.csv and steps.csv are appended to: a link left in the run folder (dangling
    # too) must not lead the appends outside it.
    from hooks.render.csv_log import CsvLog
    from trainer.artifacts import ArtifactWriter

    outside = tmp_path / "outside.txt"
    (tmp_path / "run").mkdir()
    log_file = tmp_path / "run" / "steps.csv"
    log_file.symlink_to(outside)
    log = CsvLog(log_file, ["step", "loss"])
    log.start(0)
    writer = ArtifactWriter()
    log.append(writer, [[1, 0.5]])
    writer.close()
    assert not outside.exists() and not log_file.is_symlink()
    assert log.read() == [["1", "0.5"]]
