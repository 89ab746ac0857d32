"""tools/train.py with the metrics flags: --val-every, --log-every, --monitor on the new metrics."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest

from hooks import default_hooks
from hooks.checkpoint import CheckpointHook
from tests.conftest import FAST_CLI, NO_OUTPUTS
from tools import train
from trainer.checkpoint import load_checkpoint


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--val-every", "0"], "--val-every must be a finite number above 0"),
        (["--val-every", "2.5"], "--val-every is a fraction of an epoch"),
        (["--val-every", "nan"], "--val-every must be a finite number above 0"),
        (["--log-every", "-1"], "--log-every must be a number >= 0"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main([*flags, "--print-config"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [("val/macro_f1", "max"), ("val/balanced_acc", "max"), ("val/ece", "min"), ("val/loss", "min")],
)
def test_monitor_mode_follows_the_metric(monitor: str, mode: str) -> None:
    ckpt = next(
        h for h in default_hooks("runs/x", monitor=monitor) if isinstance(h, CheckpointHook)
    )
    assert ckpt.mode == mode


def test_cli_run_with_every_metrics_output(tiny_tree: Path, tmp_path: Path) -> None:
    """--val-every 0.5 --log-every 1 --monitor val/macro_f1: every file, and best.pt picked by
    macro-F1 over every validation, those inside epochs included."""
    out = tmp_path / "run"
    argv = ["--data", str(tiny_tree), "--out", str(out), "--epochs", "2", *FAST_CLI, *NO_OUTPUTS,
            "--batch-size", "4", "--val-every", "0.5", "--log-every", "1",
            "--monitor", "val/macro_f1", "--per-class", "--calibration"]  # fmt: skip
    assert train.main(argv) == 0
    metrics = _rows(out / "metrics.csv")
    for col in ("val/macro_f1", "val/balanced_acc", "val/ece"):
        assert all(0 <= float(r[col]) <= 1 for r in metrics), col
    steps = _rows(out / "steps.csv")  # 15 images in batches of 4: 4 steps an epoch
    assert [r["step"] for r in steps] == [str(s) for s in range(1, 9)]
    per_class = _rows(out / "per_class.csv")
    f1: dict[str, list[float]] = defaultdict(list)
    for r in per_class:
        f1[r["step"]].append(float(r["f1"]))
    assert list(f1) == ["2", "4", "6", "8"]  # twice an epoch, the epoch end once
    macro = {step: sum(v) / len(v) for step, v in f1.items()}  # every class has images
    assert [macro[r["step"]] for r in metrics] == pytest.approx(
        [float(r["val/macro_f1"]) for r in metrics], abs=1e-5
    )
    best = load_checkpoint(out / "checkpoints" / "last.pt")["state"]["best"]
    assert best["val/macro_f1"] == pytest.approx(max(macro.values()), abs=1e-5)
    assert (out / "plots" / "reliability.png").is_file()


def test_cli_monitor_ece_keeps_the_lowest(tiny_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--data", str(tiny_tree), "--out", str(out), "--epochs", "3", *FAST_CLI, *NO_OUTPUTS,
            "--monitor", "val/ece"]  # fmt: skip
    assert train.main(argv) == 0
    ece = [float(r["val/ece"]) for r in _rows(out / "metrics.csv")]
    assert len(set(ece)) == 3  # distinct, so the choice is visible
    state = load_checkpoint(out / "checkpoints" / "last.pt")["state"]
    assert state["best"]["val/ece"] == pytest.approx(min(ece), abs=1e-6)
    best = load_checkpoint(out / "checkpoints" / "best.pt")["state"]
    assert best["epoch"] == ece.index(min(ece))
