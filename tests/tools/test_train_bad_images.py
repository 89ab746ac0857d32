"""tools/train.py on trees whose images break only when decoded: the run goes on, names them
in data_report.json, and stops cleanly (exit 2, no traceback) when there are too many."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import FAST_CLI, NO_OUTPUTS, make_tree
from tests.trainer.data.malformed import damage, good_bytes
from tools import train
from trainer.config import TrainConfig
from trainer.errors import ConfigError


def _undecodable(path: Path, seed: int = 0) -> None:
    # Header fine, pixel data corrupt; torchvision's native PNG decoder segfaults on it.
    path.write_bytes(damage("png", "corrupt_data", good_bytes("png", seed=seed)))


def test_an_image_failing_in_training_is_skipped_and_reported(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data", {"a": 10, "b": 10}, size=(12, 12))
    _undecodable(root / "train" / "a" / "zz.png")
    out = tmp_path / "run"
    argv = ["--data", str(root), "--out", str(out), "--epochs", "2", "--workers", "1"]
    assert train.main([*argv, *FAST_CLI[:4], *FAST_CLI[6:], *NO_OUTPUTS]) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["verify"] == "header" and report["bad_files"] == []
    assert [Path(s["path"]).name for s in report["skipped_in_training"]] == ["zz.png"]
    assert report["skip_events"] == 2  # drawn once per epoch
    assert json.loads((out / "args.json").read_text())["verify"] == "header"


def test_too_many_failures_in_training_exit_2_without_a_traceback(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data", {"a": 10, "b": 10}, size=(12, 12))
    for i in range(3):
        _undecodable(root / "train" / "a" / f"zz{i}.png", seed=i)
    argv = ["--data", str(root), "--out", str(tmp_path / "run"), "--epochs", "1"]
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve().parents[2] / "tools" / "train.py"),
            *argv,
            *FAST_CLI,
            *NO_OUTPUTS,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "--max-bad-fraction" in proc.stderr and "zz0.png" in proc.stderr


def test_verify_full_reports_a_file_that_crashes_the_native_decoder(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data", {"a": 10, "b": 10}, size=(12, 12))
    _undecodable(root / "train" / "a" / "zz.png")
    out = tmp_path / "run"
    argv = ["--data", str(root), "--out", str(out), "--epochs", "1", "--verify", "full"]
    assert train.main([*argv, *FAST_CLI, *NO_OUTPUTS]) == 0
    report = json.loads((out / "data_report.json").read_text())
    bad = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert list(bad) == ["zz.png"] and "crashed the image decoder" in bad["zz.png"]


def test_max_image_pixels_refuses_larger_images_at_the_start_up_check(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data", {"a": 10, "b": 10}, size=(12, 12))  # 144 pixels each
    big = root / "train" / "a" / "big.png"
    Image.new("RGB", (13, 12)).save(big)  # 156 pixels
    config = train.parse_config(["--data", str(root), "--max-image-pixels", "150"])
    assert config["max_image_pixels"] == 150
    data = train.build_data(TrainConfig.from_dict(config).resolved(), root)
    assert [(p, "13x12 pixels, over the pixel budget of 150" in r) for p, r in data.bad_files] == [
        (big, True)
    ]
    assert train.parse_config(["--data", str(root)])["max_image_pixels"] == 50_000_000
    zero = train.parse_config(["--data", str(root), "--max-image-pixels", "0"])
    with pytest.raises(ConfigError, match="max_image_pixels must be >= 1, got 0"):
        train.build_data(TrainConfig.from_dict(zero).resolved(), root)
