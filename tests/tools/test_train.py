"""tools/train.py end to end on tiny trees, and its answers to bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_CLI, NO_OUTPUTS, make_tree
from tools import train

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "train.py"




def test_cli_trains_and_writes_the_run_folder(tiny_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = train.main(
        ["--data", str(tiny_tree), "--out", str(out), "--epochs", "2", *FAST_CLI, *NO_OUTPUTS]
    )
    assert code == 0
    args = json.loads((out / "args.json").read_text())
    assert args["epochs"] == 2 and args["data"] == str(tiny_tree)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    for col in ("epoch", "lr", "train/loss", "train/acc", "val/loss", "val/acc"):
        assert col in rows[0]
    assert "val/acc_top5" not in rows[0]  # only 3 classes
    mapping = json.loads((out / "labels_mapping.json").read_text())
    assert mapping["class_to_idx"] == {"bird": 0, "cat": 1, "dog": 2}
    assert mapping["image_size"] == 16 and "mean" in mapping["normalization"]
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(out / "checkpoints" / name, weights_only=True)
        assert ckpt["args"]["epochs"] == 2


def test_cli_resume_and_config_replay(tiny_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        train.main(
            ["--data", str(tiny_tree), "--out", str(out), "--epochs", "1", *FAST_CLI, *NO_OUTPUTS]
        )
        == 0
    )
    # Resuming the folder replays its args.json; --epochs on the command line wins.
    assert train.main(["--resume", str(out), "--epochs", "2"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2
    assert json.loads((out / "args.json").read_text())["epochs"] == 2

    config = train.parse_config(["--config", str(out / "args.json"), "--lr", "0.5"])
    assert config["lr"] == 0.5 and config["img_size"] == 16 and config["model"] == "small_cnn"


def test_demo_defaults_apply_only_without_data(tiny_tree: Path) -> None:
    demo = train.parse_config([])
    assert demo["model"] == "small_cnn" and demo["img_size"] == 64
    real = train.parse_config(["--data", str(tiny_tree)])
    assert real["model"] == "resnet18" and real["img_size"] == 224
    assert train.parse_config(["--class-weights", "cat=2"])["sampler"] == "manual"


def _run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv, *FAST_CLI, *NO_OUTPUTS],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_missing_data_folder_is_a_clear_error_without_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = _run_cli("--data", str(missing), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda root: (root / "train" / "cat").mkdir(parents=True), "no"),
        (lambda root: make_tree(root, {"cat": 2}), "class"),
        (lambda root: (make_tree(root), (root / "train" / "empty").mkdir()), "empty"),
        (lambda root: (make_tree(root), make_tree(root, {"zebra": 1}, splits=("val",))), "zebra"),
    ],
    ids=["no-images", "one-class", "empty-class", "unknown-val-class"],
)
def test_bad_trees_exit_2_with_message(tmp_path: Path, make, expected: str, capsys) -> None:
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    code = train.main(["--data", str(root), "--out", str(tmp_path / "run"), *FAST_CLI, *NO_OUTPUTS])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err.lower() and str(root) in err


def test_bad_flag_values_are_clear_errors(tiny_tree: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "run")
    assert (
        train.main(["--data", str(tiny_tree), "--out", out, "--class-weights", "cat", *FAST_CLI])
        == 2
    )
    assert "NAME=WEIGHT" in capsys.readouterr().err
    assert (
        train.main(["--data", str(tiny_tree), "--out", out, "--class-weights", "lion=2", *FAST_CLI])
        == 2
    )
    assert "lion" in capsys.readouterr().err
    assert train.main(["--resume"]) == 2
    assert "--out" in capsys.readouterr().err
    assert train.main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert train.main(["--data", str(tiny_tree), "--out", out, "--decode", "gpu", *FAST_CLI]) == 2
    err = capsys.readouterr().err
    assert "--decode gpu" in err and "--device cuda" in err and "Traceback" not in err


def test_bad_crop_pct_and_val_resize_exit_2(tiny_tree: Path, tmp_path: Path, capsys) -> None:
    base = ["--data", str(tiny_tree), "--out", str(tmp_path / "run"), *FAST_CLI]
    assert train.main([*base, "--crop-pct", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --crop-pct") and "(0, 1]" in err and "Traceback" not in err
    for flags, says in ((["--val-resize", "letterbox"], "invalid choice: 'letterbox'"),
                        (["--batch-size", "2.5"], "--batch-size: invalid int value: '2.5'")):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            train.main([*base, *flags])
        err = capsys.readouterr().err
        # One paragraph (argparse printed the usage of every flag first): what, and where to look.
        assert e.value.code == 2 and err.startswith("error: argument ") and says in err, err
        assert len(err.strip().splitlines()) == 1 and "--help` lists the flags" in err
    assert not (tmp_path / "run").exists()


def test_print_config_prints_what_args_json_would_hold(
    tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["--data", str(tiny_tree), "--out", str(out), "--epochs", "3", *FAST_CLI]
    assert train.main([*argv, "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["epochs"] == 3 and printed["model"] == "small_cnn" and printed["report"]
    assert "print_config" not in printed and "config" not in printed
    assert not out.exists()  # nothing trained, nothing written
    # The output replays: --config on it resolves to the same configuration.
    saved = tmp_path / "cfg.json"
    saved.write_text(json.dumps(printed))
    assert train.main(["--config", str(saved), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out) == printed


def test_model_accepts_timm_names_and_rejects_typos(capsys: pytest.CaptureFixture[str]) -> None:
    assert train.parse_config(["--model", "timm/resnet10t"])["model"] == "timm/resnet10t"
    assert train.main(["--model", "resnet19", "--print-config"]) == 2
    assert "timm/<name>" in capsys.readouterr().err


def test_cli_writes_report_html(tiny_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--data", str(tiny_tree), "--out", str(out), "--epochs", "1", *FAST_CLI, *NO_OUTPUTS]
    assert train.main([*argv, "--report"]) == 0
    assert "metrics.csv" in (out / "report.html").read_text(encoding="utf-8")


def test_an_image_size_small_cnn_cannot_pool_exits_2(
    tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["--data", str(tiny_tree), "--out", str(out), *FAST_CLI, "--img-size", "12"]
    assert train.main(argv) == 2  # was torch's RuntimeError at the sanity check
    err = capsys.readouterr().err
    assert err.startswith("error: --img-size 12 is too small for small_cnn") and "16" in err
    assert not out.exists()
