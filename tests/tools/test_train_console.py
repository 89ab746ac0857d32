"""What tools/train.py prints: about 60 lines for a whole demo run, less with --quiet, all of
it with --verbose. Run as a user runs it (a subprocess, stdout and stderr as one stream)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST_CLI, make_tree

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "train.py"
FAST_LOUD = [a for a in FAST_CLI if a != "--quiet"]


def _train(*argv: str, cwd: Path | None = None) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # what a terminal shows, interleaved
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "80"},
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout
    return result.stdout.splitlines()


def test_a_demo_run_prints_about_60_lines(tmp_path: Path) -> None:
    # The demo's own settings but 3 epochs of 16-pixel images, so it takes seconds. The
    # demo's 15 epochs print 12 more epoch lines and nothing else per epoch, which the
    # last two epochs here show. The run folder is the default one, runs/<timestamp>, as a
    # user sees it: pytest's long temporary path wraps lines more (pytest-999 to pytest-1000
    # made it 61 lines).
    lines = _train("--epochs", "3", "--img-size", "16", "--cache", "ram", "--workers", "0",
                   "--device", "cpu", cwd=tmp_path)  # fmt: skip
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the run went there
    text = "\n".join(lines)
    epoch_at = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(epoch_at) == 3
    between = lines[epoch_at[1] + 1 : epoch_at[2]]
    assert all("UserWarning" in line or "savefig" in line for line in between), between
    full_demo = len(lines) + (15 - 3)
    assert full_demo <= 60, text
    # What matters is all there: the class table, the first draw, each epoch, the summary.
    assert "Class distribution" in text and "Sampled classes, epoch 1" in text
    assert "Sampled classes, epoch 2" not in text and "sampler: epoch 2 drew as planned" in text
    assert "model small_cnn: " in text and "done in" in text and "best epoch" in text


def test_quiet_keeps_epoch_lines_warnings_and_summary(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "data")  # classes of 4-6 images: a warning at fit start
    lines = _train("--data", str(tree), "--out", str(tmp_path / "run"), "--epochs", "2",
                   "--no-export", *FAST_CLI)  # fmt: skip
    text = "\n".join(lines)
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/2", "2/2"]
    assert "WARNING" in text and "fewer than 10" in text
    assert "done in" in text and "run folder" in text
    for noise in ("INFO", "Class distribution", "Sampled classes", "sampler:", "model small"):
        assert noise not in text
    # Nothing else: the epoch lines, the warnings (wrapped by rich) and the summary.
    assert len(lines) <= 16, text


def test_verbose_shows_everything(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "data")
    out = tmp_path / "run"
    lines = _train("--data", str(tree), "--out", str(out), "--epochs", "2", "--no-export",
                   "--verbose", *FAST_LOUD)  # fmt: skip
    text = "\n".join(lines)
    assert "Sampled classes, epoch 1" in text and "Sampled classes, epoch 2" in text
    assert "trainable" in text  # the model table
    assert "INFO" in text and "Class distribution" in text
    for name in ("metrics.csv", "per_class.csv"):  # every file the run wrote
        assert any(line.strip() == str(out / name) for line in lines), name


def test_quiet_and_verbose_together_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    from tools import train

    assert train.main(["--quiet", "--verbose", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--quiet" in err and "--verbose" in err and "Traceback" not in err
