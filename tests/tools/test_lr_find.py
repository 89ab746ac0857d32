"""tools/lr_find.py, and tools/train.py --lr auto: the suggestion is used, recorded, and the run
is the run an explicit --lr of that value gives, bitwise."""

from __future__ import annotations

import csv
import gc
import json
import multiprocessing
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_CLI, NO_OUTPUTS, join_as_rank, png_size, run_ranks
from tests.tools.test_resume import assert_equal, metric_rows
from tests.trainer.data.test_labelfile import tree_rows, write_labels
from tools import lr_find, train
from trainer.checkpoint import load_checkpoint
from trainer.distributed import destroy_distributed, init_distributed

# The resume test's settings: balanced sampler, crops, EMA, fp16 with its GradScaler.
RUN = ["--epochs", "2", "--img-size", "16", "--batch-size", "4", "--workers", "0",
       "--model", "small_cnn", "--device", "cpu", "--crop-scale", "0.3", "--ema-decay", "0.9",
       "--sampler", "balanced", "--precision", "16-mixed", "--sanity-steps", "1", "--quiet",
       *NO_OUTPUTS]  # fmt: skip


@pytest.fixture(autouse=True)
def _unfreeze_gc() -> Iterator[None]:
    yield
    gc.unfreeze()  # tools/train.py freezes the collector: process-wide, undone for later tests


def test_tool_writes_csv_and_plot_and_prints_the_suggestion(
    tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "find"
    argv = ["--data", str(tiny_tree), "--out", str(out), *FAST_CLI,
            "--min-lr", "1e-5", "--max-lr", "100", "--steps", "40"]  # fmt: skip
    assert lr_find.main(argv) == 0
    printed = capsys.readouterr().out
    suggested = float(re.findall(r"suggested lr: (\S+)", printed)[0])
    rows = list(csv.DictReader((out / "lr_find.csv").open()))
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss"]
    assert 13 <= len(rows) <= 40 and float(rows[0]["lr"]) == pytest.approx(1e-5)
    lrs = [float(r["lr"]) for r in rows]
    assert any(f"{lr:.3g}" == f"{suggested:.3g}" for lr in lrs[10:-1])
    assert png_size(out / "lr_find.png")[0] > 300
    assert f"wrote {out / 'lr_find.png'}" in printed


def auto_then_fixed(tree: Path, auto: Path, fixed: Path) -> float:
    """A --lr auto run in ``auto``, then a run with its recorded lr in ``fixed``."""
    assert train.main(["--data", str(tree), "--out", str(auto), "--lr", "auto", *RUN]) == 0
    lr = json.loads((auto / "args.json").read_text())["lr"]
    assert train.main(["--data", str(tree), "--out", str(fixed), "--lr", repr(lr), *RUN]) == 0
    return float(lr)


def assert_same_run(a: Path, b: Path) -> None:
    assert metric_rows(a) == metric_rows(b)
    ca, cb = (load_checkpoint(p / "checkpoints" / "last.pt") for p in (a, b))
    for part in ("model", "ema", "optimizer", "scaler", "sampler", "rng"):
        assert_equal(ca[part], cb[part], part)


def test_train_lr_auto_uses_and_records_the_suggestion(tiny_tree: Path, tmp_path: Path) -> None:
    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    lr = auto_then_fixed(tiny_tree, auto, fixed)
    assert isinstance(lr, float) and 1e-7 < lr < 10
    assert (auto / "lr_find.csv").is_file() and (auto / "lr_find.png").is_file()
    # The tool, with the same flags, suggests the same lr.
    assert lr_find.main(["--data", str(tiny_tree), "--out", str(tmp_path / "tool"), *RUN]) == 0
    rows = list(csv.DictReader((tmp_path / "tool" / "lr_find.csv").open()))
    assert lr in [float(r["lr"]) for r in rows]
    # Nothing of the range test leaks into the run: an explicit --lr of the value trains the same.
    assert_same_run(auto, fixed)
    # A resumed run keeps its recorded lr.
    assert train.main(["--resume", str(auto), "--epochs", "3"]) == 0
    assert json.loads((auto / "args.json").read_text())["lr"] == lr


def test_lr_flag_errors(tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train.main(["--data", str(tiny_tree), "--out", str(out), "--epochs", "1",
                       *FAST_CLI, *NO_OUTPUTS]) == 0  # fmt: skip
    assert train.main(["--resume", str(out), "--lr", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--lr auto picks the learning rate of a new run" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        train.parse_config(["--lr", "fast"])
    assert info.value.code == 2
    assert "expected a number or 'auto', got 'fast'" in capsys.readouterr().err
    assert train.parse_config(["--lr", "AUTO"])["lr"] == "auto"
    assert lr_find.main(["--print-config", "--steps", "7", "--data", str(tiny_tree)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 7 and printed["data"] == str(tiny_tree) and printed["min_lr"] == 1e-7


def _ddp_worker(rank: int, world: int, port: int, tree: Path, tmp: Path) -> None:
    join_as_rank(rank, world, port)
    multiprocessing.set_start_method("fork", force=True)
    assert init_distributed("cpu")  # joined once here; the CLI runs then find it up
    try:
        auto_then_fixed(tree, tmp / "auto", tmp / "fixed")
    finally:
        destroy_distributed()


def test_lr_auto_under_two_processes_on_a_label_file(tiny_tree: Path, tmp_path: Path) -> None:
    # Had the ranks suggested different lrs, their weights would drift apart, and rank 0's
    # would not be those of the run with its own lr on both ranks.
    labels = write_labels(tiny_tree / "labels.csv", tree_rows(tiny_tree))
    run_ranks(_ddp_worker, labels, tmp_path, timeout=300)
    assert json.loads((tmp_path / "auto" / "args.json").read_text())["data"] == str(labels)
    assert_same_run(tmp_path / "auto", tmp_path / "fixed")
    assert len(load_checkpoint(tmp_path / "auto")["rng_per_rank"]) == 2
