"""StepLogHook: steps.csv, a row every N optimizer steps, read from device-side sums."""

from __future__ import annotations

import csv
import math
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from hooks.checkpoint import CheckpointHook
from hooks.step_log import HEADER, StepLogHook
from tests.conftest import KillAfterEpoch, NaNAt, assert_survives_unwritable, make_engine
from trainer.engine import Engine
from trainer.hook import Hook


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        return list(reader)


class _Batches(Hook):
    """Keeps each batch's loss and size, the rows written by then, and the learning rate."""

    order = 100  # after the step log

    def __init__(self) -> None:
        self.batches: list[tuple[int, float, int]] = []  # (rows by then, loss, images)
        self.lr: dict[int, float] = {}

    def on_train_batch_start(self, engine: Engine, batch: Any, i: int) -> None:
        # The lr step N + 1 trains with (the scheduler moves it on after each step).
        self.lr[engine.state.step + 1] = engine.optimizer.param_groups[0]["lr"]

    def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
        s = engine.state
        self.batches.append((len(s.step_log), outputs["loss"].item(), len(outputs["targets"])))


def test_a_row_every_n_steps_with_the_mean_loss_since_the_last(tmp_path: Path) -> None:
    # 64 images in batches of 16, two per optimizer step: 2 steps an epoch, 8 batches in all.
    rec = _Batches()
    hook = StepLogHook(tmp_path, every=3)
    engine = make_engine([hook, rec], max_epochs=4, accumulate=2)
    engine.fit()
    rows = _read(tmp_path / "steps.csv")
    assert [(r["step"], r["epoch"]) for r in rows] == [("3", "1"), ("6", "2")]
    assert len(engine.state.step_log) == 2
    start = 0
    for k, row in enumerate(rows, 1):
        end = next(i for i, (written, _, _) in enumerate(rec.batches) if written == k) + 1
        window = rec.batches[start:end]  # the batches since the previous row, its own included
        assert len(window) == 6  # 3 steps of 2 batches
        mean = sum(loss * n for _, loss, n in window) / sum(n for _, _, n in window)
        assert float(row["loss"]) == pytest.approx(mean, rel=1e-5)
        assert float(row["lr"]) == pytest.approx(rec.lr[int(row["step"])], rel=1e-5)
        assert float(row["img_s"]) > 0
        start = end


def test_non_finite_losses_are_left_out_of_the_mean(tmp_path: Path) -> None:
    losses: list[float] = []

    class Record(Hook):
        def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
            losses.append(float(outputs["loss"]))

    hook = StepLogHook(tmp_path, every=4)
    make_engine([Record(), hook], loss=NaNAt({1}), max_epochs=1).fit()
    assert math.isnan(losses[1])
    # The first row's mean is over its finite batches (all of the same size) only.
    expected = sum(losses[:4][i] for i in (0, 2, 3)) / 3
    assert hook_row_loss(tmp_path) == pytest.approx(expected, rel=1e-5)


def hook_row_loss(run_dir: Path) -> float:
    with (run_dir / "steps.csv").open() as f:
        return float(next(csv.DictReader(f))["loss"])


def test_the_host_reads_the_sums_once_per_row_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reads = {"in_step": False, "count": 0}
    thread = threading.get_ident()

    class Open(Hook):
        order = -(10**9)

        def on_train_batch_start(self, engine: Engine, batch: Any, i: int) -> None:
            reads["in_step"] = True

    class Close(Hook):
        order = 10**9

        def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
            reads["in_step"] = False

    for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__"):
        real = getattr(torch.Tensor, name)

        def spy(self: torch.Tensor, *a: Any, _real: Any = real, **k: Any) -> Any:
            if reads["in_step"] and threading.get_ident() == thread:
                reads["count"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    hook = StepLogHook(tmp_path, every=3)
    engine = make_engine([Open(), hook, Close()], max_epochs=3)  # 4 steps an epoch
    engine.fit()
    assert len(engine.state.step_log) == 4  # steps 3, 6, 9, 12
    assert reads["count"] == 4  # one read per row, none on the other 8 steps


def test_resumed_run_writes_the_rows_of_the_straight_run(tmp_path: Path) -> None:
    """A row spanning the epoch end resumed from averages over the same batches."""
    straight = make_engine([StepLogHook(tmp_path / "a", every=3)], max_epochs=3)
    straight.fit()
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        make_engine(
            [StepLogHook(out, every=3), CheckpointHook(out), KillAfterEpoch(0)], max_epochs=3
        ).fit()
    resumed = make_engine([StepLogHook(out, every=3), CheckpointHook(out)], max_epochs=3)
    resumed.fit(resume=out)

    def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "img_s"} for r in rows]

    assert [r["step"] for r in straight.state.step_log] == [3, 6, 9, 12]
    assert strip(resumed.state.step_log) == strip(straight.state.step_log)
    assert strip(_read(out / "steps.csv")) == strip(_read(tmp_path / "a" / "steps.csv"))


def test_survives_an_unwritable_run_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(lambda p: StepLogHook(p, every=1), tmp_path, caplog)


def test_every_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every"):
        StepLogHook(tmp_path, every=0)
