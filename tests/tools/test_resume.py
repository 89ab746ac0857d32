"""Resume is exact: 4 epochs straight equal 2 epochs, an interrupt and a resume to 4, bitwise.

Every run goes through ``tools/train.py`` with the settings users train with: loader workers,
random crops and flips, EMA, the balanced sampler and fp16 with its GradScaler (on the CPU).
A hook added to the default set sends SIGINT at the end of epoch 2 (as Ctrl-C would); the
resumed run then continues from the run folder, its own torch stream moved during each epoch
(``MovedStream``), so images augmented from that stream rather than from their own seeds show
with 0 workers too. Single process with 0 and 2 workers, and 2 gloo processes (spawned by the
test, like tests/trainer/test_distributed.py).
"""

from __future__ import annotations

import csv
import gc
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import NO_OUTPUTS, join_as_rank, make_tree, run_ranks
from tools import train
from trainer.checkpoint import load_checkpoint
from trainer.distributed import destroy_distributed, init_distributed
from trainer.engine import Engine
from trainer.errors import CheckpointError
from trainer.hook import Hook

EPOCHS, STOP_AFTER = 4, 2
TIMING = ("epoch_time", "val/time", "train/img_s", "img_s")


def argv(root: Path, out: Path, workers: int, extra: Sequence[str] = ()) -> list[str]:
    return [
        "--data", str(root), "--out", str(out), "--epochs", str(EPOCHS), "--workers", str(workers),
        "--img-size", "16", "--batch-size", "4", "--model", "small_cnn", "--device", "cpu",
        "--crop-scale", "0.3", "--ema-decay", "0.9", "--sampler", "balanced",
        "--precision", "16-mixed", "--sanity-steps", "1", "--quiet", *NO_OUTPUTS, *extra,
    ]  # fmt: skip


class SigintAfter(Hook):
    """Ctrl-C at the end of epoch ``epochs``, once that epoch's checkpoint is queued."""

    order = 100

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, engine: Engine) -> None:
        if len(engine.state.history) == self.epochs:
            signal.raise_signal(signal.SIGINT)


class MovedStream(Hook):
    """Moves this process's torch stream during each epoch's training (seeds it anew), and
    puts it back before anything at the epoch end reads it (the checkpoint saves it).

    With 0 loader workers the images are augmented in this process: under their own seeds
    (``torch_seeded``) their crops and flips do not follow its stream, so the resumed run
    still equals the straight one; drawn from the stream, they would not.
    """

    order = 0  # before every other hook, at both ends

    def on_train_epoch_start(self, engine: Engine) -> None:
        self.saved = torch.get_rng_state()
        torch.manual_seed(1000 + engine.state.epoch)

    def on_train_epoch_end(self, engine: Engine) -> None:
        torch.set_rng_state(self.saved)


def with_hook(
    default_hooks: Callable[..., list[Hook]], make: Callable[[], Hook]
) -> Callable[..., list[Hook]]:
    return lambda *a, **k: [*default_hooks(*a, **k), make()]


def three_runs(root: Path, tmp: Path, workers: int, extra: Sequence[str] = ()) -> None:
    """Straight to the end in ``tmp/straight``; interrupted, then resumed (its stream moved
    during each epoch: ``MovedStream``), in ``tmp/resumed``."""
    assert train.main(argv(root, tmp / "straight", workers, extra)) == 0
    real = train.default_hooks
    try:
        train.default_hooks = with_hook(real, lambda: SigintAfter(STOP_AFTER))
        assert train.main(argv(root, tmp / "resumed", workers, extra)) == 128 + signal.SIGINT
        train.default_hooks = with_hook(real, MovedStream)
        assert train.main(["--resume", str(tmp / "resumed")]) == 0
    finally:
        train.default_hooks = real


def metric_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def assert_same_run(a: Path, b: Path) -> None:
    rows = metric_rows(a)
    assert len(rows) == EPOCHS and "val/loss" in rows[0]
    assert metric_rows(b) == rows
    ca, cb = (load_checkpoint(p / "checkpoints" / "last.pt") for p in (a, b))
    assert ca["scaler"] is not None and ca["ema"] is not None  # fp16 and EMA really ran
    for part in ("model", "ema", "optimizer", "scaler", "rng", "rng_per_rank"):
        assert_equal(ca.get(part), cb.get(part), part)


def assert_equal(x: Any, y: Any, where: str) -> None:
    """Bitwise equality of nested checkpoint data."""
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
    elif isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for k in x:
            assert_equal(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list | tuple):
        assert isinstance(y, list | tuple) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_equal(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


@pytest.fixture(autouse=True)
def _unfreeze_gc() -> Iterator[None]:
    yield
    gc.unfreeze()  # tools/train.py freezes the collector: process-wide, undone for later tests


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 15 training images in batches of 4: a short last batch, 4 steps per epoch.
    return make_tree(tmp_path_factory.mktemp("resume") / "tree", size=(20, 16))


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_run_equals_the_straight_run(
    tree: Path, tmp_path: Path, workers: int
) -> None:
    three_runs(tree, tmp_path, workers)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_resume_is_exact_with_mid_epoch_validation_and_the_step_and_class_files(
    tree: Path, tmp_path: Path
) -> None:
    """--val-every: checkpoints stay resumable at epoch ends only, and the straight and resumed
    runs agree on metrics.csv, steps.csv (a row spans the epoch end resumed from) and
    per_class.csv (the killed run's rows after its last epoch end are not repeated)."""
    three_runs(tree, tmp_path, 0, ["--val-every", "0.5", "--log-every", "3", "--per-class"])
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    for name in ("steps.csv", "per_class.csv"):
        a, b = (_csv(tmp_path / run / name) for run in ("straight", "resumed"))
        assert len(a) > EPOCHS and a == b, name


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def test_augmentation_does_not_depend_on_the_worker_count(tree: Path, tmp_path: Path) -> None:
    """Each image's crop and flip are drawn from (seed, epoch, position in the epoch)."""
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        assert train.main([*argv(tree, out, workers), "--epochs", "1"]) == 0
    assert metric_rows(tmp_path / "w0") == metric_rows(tmp_path / "w2")


# ------------------------------------------------------------------------ mid-epoch interrupts
class SigintAtBatch(Hook):
    def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, batch_idx: int) -> None:
        if engine.state.epoch == 1 and batch_idx == 1:
            signal.raise_signal(signal.SIGINT)


def test_mid_epoch_interrupt_is_refused_as_a_resume_point(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    real = train.default_hooks
    monkeypatch.setattr(train, "default_hooks", lambda *a, **k: [*real(*a, **k), SigintAtBatch()])
    assert train.main(argv(tree, out, 0)) == 128 + signal.SIGINT
    emergency = out / "checkpoints" / "interrupted.pt"
    err = capsys.readouterr().err
    assert str(emergency) in err and "--resume" in err
    monkeypatch.setattr(train, "default_hooks", real)
    # Half an epoch is done in it: resuming from it could not be exact, so it is refused.
    assert train.main(["--resume", str(emergency)]) == 2
    err = capsys.readouterr().err
    assert str(emergency) in err and "last.pt" in err and "Traceback" not in err
    # The run folder resumes from last.pt, the end of epoch 1.
    assert train.main(["--resume", str(out), "--epochs", "2"]) == 0
    assert len(metric_rows(out)) == 2


def test_exit_message_names_interrupted_pt_only_when_written(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def ctrl_c(*a: Any, **k: Any) -> None:
        raise KeyboardInterrupt  # while the data is scanned: before any checkpoint

    # One left by an earlier interrupt is not this run's.
    stale = tmp_path / "run" / "checkpoints" / "interrupted.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    monkeypatch.setattr(train, "build_data", ctrl_c)
    # --overwrite: the folder holds a run (its checkpoints/), which a new run must not reuse
    # by accident; the interrupt comes before anything is removed.
    assert train.main([*argv(tree, tmp_path / "run", 0), "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "interrupted.pt" not in err


def test_engine_refuses_a_mid_epoch_checkpoint(tmp_path: Path) -> None:
    from tests.conftest import make_engine

    engine = make_engine(max_epochs=3)
    engine.state.epoch, engine.state.phase = 1, "train"  # as in the middle of epoch 2
    engine.state.history = [{"epoch": 0.0}]
    engine.save_checkpoint(tmp_path / "interrupted.pt")
    with pytest.raises(CheckpointError, match="interrupted.pt.*last.pt"):
        make_engine(max_epochs=3).fit(resume=tmp_path / "interrupted.pt")


# ------------------------------------------------------------------------ 2 processes
def _ddp_worker(rank: int, world: int, port: int, root: Path, tmp: Path) -> None:
    join_as_rank(rank, world, port)
    # Loader workers fork, as in a process torchrun starts; spawned ones would re-import
    # this module each, several seconds apiece on a busy machine.
    multiprocessing.set_start_method("fork", force=True)
    assert init_distributed("cpu")  # joined once here; the CLI runs then find it up
    try:
        three_runs(root, tmp, workers=1)
    finally:
        destroy_distributed()


def test_resume_is_exact_under_two_processes(tree: Path, tmp_path: Path) -> None:
    run_ranks(_ddp_worker, tree, tmp_path, timeout=180)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    assert len(load_checkpoint(tmp_path / "resumed")["rng_per_rank"]) == 2
