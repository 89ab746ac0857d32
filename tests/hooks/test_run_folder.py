"""RunFolderHook: args.json, data_report.json and labels_mapping.json, written once at fit start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hooks.run_folder import RunFolderHook
from tests.conftest import StandInData, run_fit
from trainer.hook import Hook


def test_a_python_run_records_what_its_engine_and_data_know(
    tmp_path: Path, data: StandInData
) -> None:
    engine = run_fit([RunFolderHook(tmp_path)], data, epochs=1, args={})
    args = json.loads((tmp_path / "args.json").read_text())
    assert args == engine.args  # also what checkpoints and report.html hold
    assert args["epochs"] == 1 and args["img_size"] == data.img_size and args["seed"] == 0
    assert args["device"] == "cpu" and isinstance(args["lr"], float)
    mapping = json.loads((tmp_path / "labels_mapping.json").read_text())
    assert mapping == data.labels_mapping()


def test_the_settings_given_to_the_engine_are_written_as_they_are(
    tmp_path: Path, data: StandInData
) -> None:
    given = {"model": "small_cnn", "epochs": 1, "pipeline": {"source": "built-in"}}
    engine = run_fit([RunFolderHook(tmp_path)], data, epochs=1, args=given)
    assert json.loads((tmp_path / "args.json").read_text()) == given == engine.args


def test_a_linked_output_folder_is_refused_before_anything_is_written(
    tmp_path: Path, data: StandInData
) -> None:
    # A run folder (shared, downloaded, or left by a tool) whose checkpoints/ links elsewhere
    # would have the run write there and delete old epochs there: refused, nothing touched.
    import pytest

    from hooks import CheckpointHook
    from trainer.errors import OutputError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "epoch_000.pt").write_bytes(b"not yours")
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    hooks = [RunFolderHook(out), CheckpointHook(out / "checkpoints", top_k=1)]
    with pytest.raises(OutputError, match=r"checkpoints is a symbolic link .*elsewhere"):
        run_fit(hooks, data, epochs=1, args={})
    assert sorted(p.name for p in elsewhere.iterdir()) == ["epoch_000.pt"]
    assert (elsewhere / "epoch_000.pt").read_bytes() == b"not yours"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]


def test_a_new_run_refuses_a_folder_that_holds_one_until_told_to_replace_it(
    tmp_path: Path, data: StandInData
) -> None:
    # As tools/train.py refuses it: a second run's last.pt beside the first run's epoch files
    # would mix two runs. Nothing of the first run changes; overwrite=True replaces it (its
    # files only), and resuming it, or the same hooks fitting again, goes on as before.
    import pytest

    from hooks import default_hooks
    from tests.conftest import make_engine, tree_digest
    from trainer.errors import ConfigError

    out = tmp_path / "run"

    def hooks(**kw: Any) -> list[Hook]:
        return default_hooks(out, top_k=3, export=False, report=False, progress=False, **kw)

    first = hooks()
    run_fit(first, data, epochs=3, args={})
    assert len(list((out / "checkpoints").glob("epoch_*.pt"))) == 3
    (out / "notes.txt").write_text("mine")
    before = tree_digest(out, mtimes=True)
    with pytest.raises(ConfigError, match=r"already holds a run.*overwrite=True") as info:
        run_fit(hooks(), data, epochs=1, args={})
    assert "resume=" in str(info.value) and str(out) in str(info.value)
    assert tree_digest(out, mtimes=True) == before
    run_fit(first, data, epochs=1, args={})  # the same hooks again: this process's own run
    run_fit(hooks(overwrite=True), data, epochs=1, args={})
    assert [p.name for p in (out / "checkpoints").glob("epoch_*.pt")] == ["epoch_000.pt"]
    assert (out / "notes.txt").read_text() == "mine"
    engine = make_engine(hooks(), data, max_epochs=2, args={})
    engine.fit(resume=out)
    assert len(engine.state.history) == 2
