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
from tools import train
from trainer.io import temp_path

ARGS = [*FAST_CLI, *NO_OUTPUTS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 1-epoch run; tests work on copies of it (copy2 keeps the mtimes)."""
    base = tmp_path_factory.mktemp("run_folder")
    return _one_epoch(make_tree(base / "tree"), base / "run")


def _one_epoch(root: Path, out: Path) -> Path:
    """Train ``root`` for one epoch into ``out`` (one thread: tiny batches gain nothing)."""
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
    for name in ("top_losses.csv", "most_confused.csv"):  # likewise
        (run_copy / name).write_text("epoch\n")
    (run_copy / "notes.txt").write_text("mine")
    argv = ["--data", _data_of(run_copy), "--out", str(run_copy), "--epochs", "1", *ARGS]
    assert train.main([*argv, "--overwrite"]) == 0
    assert not (ckpts / "epoch_007.pt").exists()
    for name in ("class_distribution.csv", "top_losses.csv", "most_confused.csv"):
        assert not (run_copy / name).exists(), name
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


# ------------------------------------------------ resume: settings that shape the data (issue 24)
@pytest.fixture(scope="module")
def trained_unsplit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished 1-epoch run on a tree of class folders only (split by seed and fraction)."""
    base = tmp_path_factory.mktemp("unsplit")
    return _one_epoch(make_tree(base / "tree", {"cat": 5, "dog": 5}, splits=()), base / "run")


@pytest.mark.parametrize(
    ("flags", "flag"),
    [(["--seed", "1"], "--seed"), (["--val-fraction", "0.4"], "--val-fraction")],
    ids=["seed", "val-fraction"],
)
def test_resume_refuses_another_split_of_a_tree_of_class_folders(
    trained_unsplit: Path,
    tmp_path: Path,
    flags: list[str],
    flag: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = Path(shutil.copytree(trained_unsplit, tmp_path / "run"))
    before = tree_digest(run, mtimes=True)
    assert train.main(["--resume", str(run), "--epochs", "2", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    assert f"drop {flag}" in err and "validation images into training" in err
    assert tree_digest(run, mtimes=True) == before


def test_resume_refuses_other_data_with_the_same_class_names(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_tree(run_copy.parent / "other", seed=1)  # the same classes, other images
    before = tree_digest(run_copy, mtimes=True)
    assert train.main(["--resume", str(run_copy), "--epochs", "2", "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "drop --data" in err and str(other) in err and "Traceback" not in err
    assert tree_digest(run_copy, mtimes=True) == before


def test_a_run_trained_on_a_relative_data_path_resumes_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # args.json (what --resume replays) names the data by its absolute path: a relative one
    # would point elsewhere from another working directory, and --data with the absolute
    # path of the same tree counts as the same data.
    make_tree(tmp_path / "project" / "tree", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path / "project")
    _one_epoch(Path("tree"), Path("runs") / "rel")
    run = tmp_path / "project" / "runs" / "rel"
    assert _data_of(run) == str(tmp_path / "project" / "tree")
    monkeypatch.chdir(tmp_path)
    assert train.main(["--resume", str(run), "--epochs", "2", *ARGS]) == 0
    assert train.main(["--resume", str(run), "--epochs", "3", "--data", "project/tree", *ARGS]) == 0
    assert len(torch.load(run / "checkpoints" / "last.pt")["state"]["history"]) == 3


def test_a_split_setting_may_change_on_a_split_tree(tmp_path: Path) -> None:
    """train/ and val/ folders fix the split: another seed changes the sampling only."""
    from trainer.run_folder import check_resume_settings

    tree = make_tree(tmp_path / "tree", {"a": 1})
    ckpt = {"args": {"seed": 0, "val_fraction": 0.2, "model": "small_cnn"}}
    config = {"data": str(tree), "seed": 5, "val_fraction": 0.5, "model": "small_cnn"}
    check_resume_settings(ckpt, {**config, "img_size": 16, "ema_decay": 0}, tmp_path / "x.pt")
    unsplit = make_tree(tmp_path / "unsplit", {"a": 1}, splits=())
    with pytest.raises(ValueError, match="--seed"):
        check_resume_settings(ckpt, {**config, "data": str(unsplit)}, tmp_path / "x.pt")


def test_a_label_file_is_split_by_seed_and_fraction_like_a_tree_of_class_folders(
    tmp_path: Path,
) -> None:
    """Rows without a split are split by --seed and --val-fraction: another value on resume
    would move validation images into training, as on a tree of class folders."""
    from trainer.run_folder import check_resume_settings

    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.png,a\n", encoding="utf-8")
    ckpt = {"args": {"seed": 0, "val_fraction": 0.2, "model": "small_cnn"}}
    config = {"data": str(labels), "seed": 0, "val_fraction": 0.2, "model": "small_cnn"}
    check_resume_settings(ckpt, config, tmp_path / "x.pt")  # the same split: resumes
    for key, value in (("seed", 5), ("val_fraction", 0.4)):
        flag = "--" + key.replace("_", "-")
        with pytest.raises(ValueError, match=f"validation images into training; drop {flag}"):
            check_resume_settings(ckpt, {**config, key: value}, tmp_path / "x.pt")


@pytest.mark.parametrize("lr", ["-1", "nan", "inf", "0"])
def test_a_learning_rate_that_cannot_train_exits_2_with_one_error_line(
    lr: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train.main(["--out", str(out), "--lr", lr, *ARGS])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--lr" in err and "finite number above 0" in err
    assert not out.exists()
    cfg = tmp_path / "exp.yaml"  # the same from a config file
    cfg.write_text(f"lr: {lr}\n")
    assert train.main(["--config", str(cfg), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --config ") and "'lr'" in err and "finite number" in err


# ------------------------------------------------ the same run folder from Python (issue 23)
def test_a_run_made_from_python_leaves_the_files_of_a_cli_run(
    trained: Path, tmp_path: Path
) -> None:
    from hooks import default_hooks
    from trainer import Engine, ImageFolderData, build_model

    out = tmp_path / "py"
    data = ImageFolderData(_data_of(trained), img_size=16, batch_size=8, workers=0)
    off = {k[5:].replace("-", "_"): False for k in NO_OUTPUTS if k.startswith("--no-")}
    hooks = default_hooks(out, **{**off, "report": True}, log_every=0, verbosity="quiet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model("small_cnn", data.num_classes)
        Engine(model, data, max_epochs=1, device="cpu", hooks=hooks).fit()
    finally:
        torch.set_num_threads(threads)

    def files(run: Path) -> set[str]:
        return {str(p.relative_to(run)) for p in run.rglob("*")}

    assert files(out) - {"report.html"} == files(trained)
    args = json.loads((out / "args.json").read_text())
    assert args["data"] == _data_of(trained) and args["img_size"] == 16 and args["epochs"] == 1
    replayed = train.parse_config(["--config", str(out / "args.json")])  # it replays
    assert replayed["img_size"] == 16 and replayed["batch_size"] == 8
    mapping = json.loads((out / "labels_mapping.json").read_text())
    assert mapping == json.loads((trained / "labels_mapping.json").read_text())
    assert json.loads((out / "data_report.json").read_text())["classes"] == data.classes
    page = (out / "report.html").read_text()
    assert '<section id="config">' in page and "batch_size" in page
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["args"] == args
