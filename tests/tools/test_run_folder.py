"""tools/train.py never loses a run folder: no silent overwrite, no half-checked resume."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_CLI, NO_OUTPUTS, make_tree, tree_digest
from tests.tools.tiny_run import load_tool
from trainer.io import temp_path

train = load_tool("train")

ARGS = [*FAST_CLI, *NO_OUTPUTS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 1-epoch run; tests work on copies of it (copy2 keeps the mtimes)."""
    base = tmp_path_factory.mktemp("run_folder")
    root = make_tree(base / "tree")
    out = base / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(["--data", str(root), "--out", str(out), "--epochs", "1", *ARGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def run_copy(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _data_of(run: Path) -> str:
    return str(json.loads((run / "args.json").read_text())["data"])


@pytest.mark.parametrize(
    "kept",
    [None, ("args.json", "labels_mapping.json", "data_report.json"), ("metrics.csv",),
     ("checkpoints",)],
    ids=["whole-run", "died-before-an-epoch-ended", "metrics-alone", "checkpoints-alone"],
)  # fmt: skip
def test_a_new_run_refuses_a_folder_that_holds_one(
    run_copy: Path, kept: tuple[str, ...] | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that died early left only some of its files: refused all the same."""
    argv = ["--data", _data_of(run_copy), "--out", str(run_copy), "--epochs", "1", *ARGS]
    for path in run_copy.iterdir() if kept is not None else ():
        if path.name not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert kept is None or sorted(p.name for p in run_copy.iterdir()) == sorted(kept)
    before = tree_digest(run_copy, mtimes=True)
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    assert str(run_copy) in err and f"--resume {run_copy}" in err and "--overwrite" in err
    assert tree_digest(run_copy, mtimes=True) == before


def test_overwrite_replaces_the_run_and_keeps_other_files(run_copy: Path) -> None:
    ckpts = run_copy / "checkpoints"
    torch.save({"model": {}}, ckpts / "epoch_007.pt")  # left by the earlier, longer run
    # Left by an earlier run with the dataset statistics on (this one has them off).
    (run_copy / "class_distribution.csv").write_text("class_idx,class_name,train\n")
    (run_copy / "notes.txt").write_text("mine")
    argv = ["--data", _data_of(run_copy), "--out", str(run_copy), "--epochs", "1", *ARGS]
    assert train.main([*argv, "--overwrite"]) == 0
    assert not (ckpts / "epoch_007.pt").exists()
    assert not (run_copy / "class_distribution.csv").exists()
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert "overwrite" not in json.loads((run_copy / "args.json").read_text())
    assert train.main(["--resume", str(run_copy), "--overwrite"]) == 2


def test_default_run_folders_do_not_collide_within_a_second(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: "20250101-120000")
    assert [train.new_run_dir(tmp_path / "runs").name for _ in range(3)] == [
        "20250101-120000",
        "20250101-120000-2",
        "20250101-120000-3",
    ]
    # Through the CLI: the taken name is left alone, the new run gets the next one.
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(tmp_path / "runs")
    shutil.copytree(trained, tmp_path / "runs" / "20250101-120000")
    before = tree_digest(tmp_path / "runs" / "20250101-120000", mtimes=True)
    assert train.main(["--data", _data_of(trained), "--epochs", "1", *ARGS]) == 0
    assert (tmp_path / "runs" / "20250101-120000-2" / "checkpoints" / "last.pt").is_file()
    assert tree_digest(tmp_path / "runs" / "20250101-120000", mtimes=True) == before


def _drop_model_from_args(run: Path) -> None:
    # A checkpoint that does not say its architecture: only loading its weights can tell.
    last = run / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    del ckpt["args"]["model"]
    torch.save(ckpt, last)


def _truncate(run: Path) -> None:
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])


def _other_classes(run: Path) -> list[str]:
    other = make_tree(run.parent / "other", {"cat": 3, "dog": 3})
    return ["--data", str(other)]


@pytest.mark.parametrize(
    ("flags", "prepare", "expected"),
    [
        (
            ["--model", "resnet18"],
            None,
            "trained with --model small_cnn, this run asks for resnet18",
        ),
        (["--img-size", "24"], None, "--img-size 16, this run asks for 24"),
        (["--ema-decay", "0.9"], None, "--ema-decay 0.0, this run asks for 0.9"),
        ([], _other_classes, "other classes"),
        (["--model", "resnet18"], _drop_model_from_args, "do not fit a resnet18"),
        ([], _truncate, "could not be read"),
    ],
    ids=["model", "img-size", "ema", "classes", "weights", "truncated"],
)
def test_a_failed_resume_leaves_the_folder_byte_identical(
    run_copy: Path,
    flags: list[str],
    prepare: Callable[[Path], list[str] | None] | None,
    expected: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    extra = (prepare(run_copy) if prepare else None) or []
    (run_copy / "checkpoints" / temp_path("last.pt").name).write_bytes(b"left by a kill")
    before = tree_digest(run_copy, mtimes=True)
    assert train.main(["--resume", str(run_copy), "--epochs", "2", *flags, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert str(run_copy) in err
    assert tree_digest(run_copy, mtimes=True) == before


def test_the_next_start_cleans_temp_files_everywhere_and_only_ours(run_copy: Path) -> None:
    ours = [
        temp_path(run_copy / "metrics.csv"),
        temp_path(run_copy / "plots" / "loss.png"),
        temp_path(run_copy / "checkpoints" / "best.pt"),
    ]
    theirs = [run_copy / ".notes.tmp", run_copy / "plots" / "draft.tmp"]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert train.main(["--resume", str(run_copy), "--epochs", "2"]) == 0
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs)
    # The copy resumed in place, not in the folder its args.json was written in.
    assert len((run_copy / "metrics.csv").read_text().splitlines()) == 3
