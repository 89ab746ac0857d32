"""Signals, non-finite losses and failing hooks: the run stops cleanly and keeps its work."""

from __future__ import annotations

import hashlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hooks.checkpoint import CheckpointHook
from hooks.early_stopping import EarlyStoppingHook
from tests.conftest import FAST_CLI, NaNAt, StandInData, make_engine, make_tree
from trainer.checkpoint import load_checkpoint
from trainer.engine import Engine
from trainer.errors import CheckpointError, ConfigError, Interrupted, NonFiniteLossError
from trainer.hook import Hook

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "train.py"


class RaiseSignal(Hook):
    """Sends the process ``times`` signals (SIGINT by default) from inside a training step."""

    def __init__(self, at_step: int, times: int = 1, signum: int = signal.SIGINT) -> None:
        self.at_step, self.times, self.signum = at_step, times, signum
        self.batch_ends: list[int] = []

    def on_after_backward(self, engine: Engine) -> None:
        if engine.state.epoch == 1 and engine.state.batch_idx == self.at_step:
            for _ in range(self.times):
                signal.raise_signal(self.signum)

    def on_train_batch_end(self, engine: Engine, outputs, batch, batch_idx: int) -> None:
        self.batch_ends.append(batch_idx)


def test_sigint_finishes_the_step_saves_and_raises(tmp_path: Path) -> None:
    seen: list[str] = []

    class Watch(Hook):
        def on_train_batch_end(self, engine, outputs, batch, batch_idx) -> None:
            seen.append(f"end{batch_idx}")

        def on_exception(self, engine, exception) -> None:
            seen.append(type(exception).__name__)

    engine = make_engine([CheckpointHook(tmp_path), RaiseSignal(at_step=1), Watch()], max_epochs=3)
    with pytest.raises(Interrupted) as info:
        engine.fit()
    assert info.value.exit_code == 130
    # The step that got the signal completed (optimizer, batch end), then the fit stopped.
    assert seen[-2:] == ["end1", "Interrupted"]
    assert engine.state.step == 4 + 2
    assert len(engine.state.history) == 1  # the unfinished epoch is not recorded
    emergency = load_checkpoint(tmp_path / "checkpoints" / "interrupted.pt")
    assert emergency["state"]["step"] == 6
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["step"] == 4
    # The handlers are restored after fit.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # Saved inside an epoch, the emergency checkpoint is no exact resume point: refused,
    # naming the way that is. The run folder resumes from last.pt.
    again = make_engine([CheckpointHook(tmp_path)], max_epochs=3)
    with pytest.raises(CheckpointError, match=r"interrupted\.pt.*middle of epoch 2.*last\.pt"):
        again.fit(resume=tmp_path / "checkpoints" / "interrupted.pt")
    again.fit(resume=tmp_path)
    assert len(again.state.history) == 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_leaves_at_once_with_its_own_exit_code(signum: int) -> None:
    hook = RaiseSignal(at_step=1, times=2, signum=signum)
    engine = make_engine([hook], max_epochs=3)
    with pytest.raises(Interrupted) as info:
        engine.fit()
    assert info.value.exit_code == 128 + signum
    assert hook.batch_ends[-1] == 0  # raised inside step 1, which never reached its end


def test_sigterm_exits_143_and_the_run_resumes(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data", {"a": 20, "b": 20}, size=(16, 16))
    out = tmp_path / "run"
    argv = [
        sys.executable,
        str(SCRIPT),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "50",
        *FAST_CLI,
        "--batch-size",
        "4",
        "--no-export",
        "--no-report",
        "--no-samples",
        "--no-confusion-matrix",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "--resume" in err
    assert (out / "checkpoints" / "interrupted.pt").is_file()
    done = len(load_checkpoint(out)["state"]["history"])
    # The resume needs no process of its own: tools/train.py's main, here.
    from tools import train

    assert train.main(["--resume", str(out), "--epochs", str(done + 1)]) == 0
    assert len(load_checkpoint(out)["state"]["history"]) == done + 1


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_nan_loss_skips_the_step_and_is_counted(precision: str) -> None:
    weights: list[dict[str, torch.Tensor]] = []

    class Snapshot(Hook):
        def on_train_batch_end(self, engine, outputs, batch, batch_idx) -> None:
            weights.append({k: v.clone() for k, v in engine.model.state_dict().items()})

    ema_before: dict[str, torch.Tensor] = {}

    class EmaSnapshot(Hook):
        def on_train_batch_start(self, engine, batch, batch_idx) -> None:
            if engine.state.epoch == 1 and batch_idx == 1:
                ema_before.update({k: v.clone() for k, v in engine.ema.module.state_dict().items()})

        def on_train_batch_end(self, engine, outputs, batch, batch_idx) -> None:
            if engine.state.epoch == 1 and batch_idx == 1:
                for k, v in engine.ema.module.state_dict().items():
                    if v.dtype.is_floating_point:
                        assert torch.equal(v, ema_before[k]), k

    engine = make_engine(
        [Snapshot(), EmaSnapshot()],
        loss=NaNAt({5}),
        max_epochs=2,
        precision=precision,
        ema_decay=0.9,
    )
    engine.fit()
    # Call 5 is epoch 1, batch 1: its step changed no parameter and no EMA weight.
    for k, v in weights[5].items():
        if v.dtype.is_floating_point and "running" not in k:
            assert torch.equal(v, weights[4][k]), k
    assert engine.state.history[1]["train/skipped_steps"] == 1
    assert "train/skipped_steps" not in engine.state.history[0]
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())
    # The skipped batch is left out of the epoch's loss and accuracy, not averaged in as NaN.
    assert math.isfinite(engine.state.history[1]["train/loss"])
    assert 0 <= engine.state.history[1]["train/acc"] <= 1


class InfIntoFirstLayer(Hook):
    """Puts an inf into one training batch's activations (a forward pre-hook on the first
    layer), so the NaN reaches the BatchNorm statistics before the loss shows it; records the
    model and EMA state around that batch."""

    def __init__(self, epoch: int, batch_idx: int) -> None:
        self.at = (epoch, batch_idx)
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}

    def _now(self, engine: Engine) -> bool:
        return (engine.state.epoch, engine.state.batch_idx) == self.at

    def _state(self, engine: Engine) -> dict[str, torch.Tensor]:
        assert engine.ema is not None
        both = {
            **engine.model.state_dict(),
            **{f"ema.{k}": v for k, v in engine.ema.module.state_dict().items()},
        }
        return {k: v.clone() for k, v in both.items()}

    def on_fit_start(self, engine: Engine) -> None:
        def inject(module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
            if module.training and self._now(engine):
                x = args[0].clone()
                x[0, 0, 0, 0] = float("inf")
                return (x,)
            return None

        engine.model.features[0].register_forward_pre_hook(inject)  # type: ignore[index]

    def on_train_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None:
        if self._now(engine):
            self.before = self._state(engine)

    def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._now(engine):
            self.after = self._state(engine)


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_inf_in_the_forward_pass_never_reaches_weights_ema_or_batchnorm(precision: str) -> None:
    def fit(hooks: list[Hook]) -> Engine:
        engine = make_engine(hooks, max_epochs=2, ema_decay=0.9, precision=precision)
        engine.fit()
        return engine

    inf = InfIntoFirstLayer(epoch=0, batch_idx=1)
    hit, clean = fit([inf]), fit([])
    # The skipped step left every weight, BatchNorm buffer and EMA tensor as it was, bitwise.
    assert inf.before and inf.before.keys() == inf.after.keys()
    for k, v in inf.before.items():
        assert torch.equal(v, inf.after[k]), k
    assert hit.state.history[0]["train/skipped_steps"] == 1
    # Validation (on the EMA weights) stays finite, near the run that never saw the inf.
    for poisoned, ok in zip(hit.state.history, clean.state.history, strict=True):
        assert math.isfinite(poisoned["val/loss"])
        assert poisoned["val/loss"] == pytest.approx(ok["val/loss"], rel=0.1)
    for t in [*hit.model.state_dict().values(), *hit.eval_model.state_dict().values()]:
        assert torch.isfinite(t).all()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_in_a_row_stops_with_a_clear_error_and_keeps_best(tmp_path: Path, monkeypatch) -> None:
    import trainer.nonfinite

    monkeypatch.setattr(trainer.nonfinite, "CHECK_EVERY", 1)
    make_engine([CheckpointHook(tmp_path)], max_epochs=1).fit()
    best = tmp_path / "checkpoints" / "best.pt"
    before = _digest(best)
    engine = make_engine([CheckpointHook(tmp_path)], loss=NaNAt(set(range(100))), max_epochs=3)
    with pytest.raises(NonFiniteLossError, match="5 optimizer steps in a row"):
        engine.fit(resume=tmp_path)
    assert _digest(best) == before
    assert (tmp_path / "checkpoints" / "interrupted.pt").is_file()


def test_state_hook_failure_saves_an_emergency_checkpoint_and_names_the_hook(
    tmp_path: Path,
) -> None:
    engine = make_engine(
        [CheckpointHook(tmp_path), EarlyStoppingHook(monitor="val/nonexistent")], max_epochs=2
    )
    with pytest.raises(ConfigError, match="--monitor val/nonexistent") as info:
        engine.fit()
    assert "EarlyStoppingHook.on_validation_end" in "".join(info.value.__notes__)
    assert (tmp_path / "checkpoints" / "interrupted.pt").is_file()


def test_artefact_hook_failure_does_not_stop_training(tmp_path: Path, caplog) -> None:
    from hooks.training_history import TrainingHistoryHook

    blocker = tmp_path / "plots"
    blocker.write_text("a file where the plots folder should be")
    with caplog.at_level("WARNING"):
        history = make_engine([TrainingHistoryHook(tmp_path)], max_epochs=2).fit()
    assert len(history) == 2
    assert str(blocker) in caplog.text


def test_fp16_on_cpu_uses_a_grad_scaler() -> None:
    engine = make_engine(precision="16-mixed", max_epochs=1, data=StandInData.sized(32))
    assert engine.scaler is not None
    engine.fit()
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())


def test_train_class_missing_from_val_has_no_accuracy_not_nan(tmp_path: Path) -> None:
    from trainer.data import ImageFolderData
    from trainer.models import build_model

    make_tree(tmp_path / "d", {"a": 6, "b": 6, "c": 6}, size=(16, 16), splits=("train",))
    make_tree(tmp_path / "d", {"a": 3, "b": 3}, size=(16, 16), splits=("val",))
    data = ImageFolderData(tmp_path / "d", img_size=16, batch_size=8, workers=0)
    engine = Engine(build_model("small_cnn", 3), data, max_epochs=1, device="cpu")
    engine.fit()
    assert engine.state.per_class_acc["c"] is None  # "n/a": no val image, not NaN
    assert engine.state.per_class_acc["a"] is not None
