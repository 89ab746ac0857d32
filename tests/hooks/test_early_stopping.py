"""EarlyStoppingHook: stops after ``patience`` epochs without an improvement of ``min_delta``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from hooks import EarlyStoppingHook, default_hooks
from hooks.checkpoint import CheckpointHook
from tests.conftest import KillAfterEpoch, StandInData, make_engine
from trainer.state import EngineState


def _stops_after(hook: EarlyStoppingHook, values: list[float]) -> int | None:
    """Feed one validation per value; the 1-based epoch at which the hook asked to stop."""
    state = EngineState(phase="val")
    engine = SimpleNamespace(state=state)
    for epoch, value in enumerate(values, start=1):
        state.metrics = {"val/acc": value, "val/loss": value}
        hook.on_validation_end(engine)  # type: ignore[arg-type]
        if state.should_stop:
            return epoch
    return None


@pytest.mark.parametrize(
    ("values", "min_delta", "mode", "stop"),
    [
        ([0.5, 0.6, 0.7, 0.8, 0.9], 0.0, "max", None),  # improving every epoch
        ([0.5, 0.5, 0.5], 0.0, "max", 3),  # an equal value is no improvement
        ([0.5, 0.4, 0.6, 0.59, 0.58], 0.0, "max", 5),  # the count restarts at 0.6
        ([0.5, 0.54, 0.545, 0.6], 0.05, "max", 3),  # within min_delta of the best: no gain
        ([0.5, 0.56, 0.62, 0.68], 0.05, "max", None),  # +0.06: over it
        ([1.0, 0.9, 0.95, 0.91], 0.0, "min", 4),  # a loss: lower is better
        ([math.nan, math.nan], 0.0, "max", 2),  # NaN never improves
    ],
)
def test_stops_after_patience_epochs_without_enough_improvement(
    values: list[float], min_delta: float, mode: str, stop: int | None
) -> None:
    monitor = "val/acc" if mode == "max" else "val/loss"
    hook = EarlyStoppingHook(monitor, patience=2, min_delta=min_delta, mode=mode)
    assert _stops_after(hook, values) == stop


def test_the_sanity_pass_counts_for_nothing() -> None:
    hook = EarlyStoppingHook("val/acc", patience=1)
    state = EngineState(phase="sanity", metrics={"val/acc": 0.1})
    hook.on_validation_end(SimpleNamespace(state=state))  # type: ignore[arg-type]
    assert hook.wait == 0 and hook.best is None


def test_default_hooks_pass_min_delta_and_mode() -> None:
    hooks = default_hooks("runs/x", monitor="val/loss", early_stopping=3, min_delta=0.01)
    (hook,) = [h for h in hooks if isinstance(h, EarlyStoppingHook)]
    assert (hook.patience, hook.min_delta, hook.mode) == (3, 0.01, "min")


def test_a_resumed_run_stops_at_the_epoch_the_straight_run_stops(tmp_path: Path) -> None:
    """The count of epochs without improvement is in the checkpoint: killed after epoch 2
    (one epoch without improvement), the resumed run stops where the straight one did."""

    def fit(out: Path, *extra: object, resume: Path | None = None) -> int:
        # No epoch beats the first by min_delta 1.0: with patience 2, epoch 3 stops the run.
        stopper = EarlyStoppingHook("val/acc", patience=2, min_delta=1.0)
        hooks = [stopper, CheckpointHook(out), *extra]
        engine = make_engine(hooks, StandInData.sized(8, batch_size=8), max_epochs=6,
                             sanity_steps=0)  # fmt: skip
        engine.fit(resume=resume)
        return len(engine.state.history)

    assert fit(tmp_path / "straight") == 3
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "resumed", KillAfterEpoch(1))
    assert fit(tmp_path / "resumed", resume=tmp_path / "resumed") == 3


def test_a_monitor_the_run_does_not_have_is_a_config_error_naming_what_it_has(
    tmp_path: Path,
) -> None:
    # A typo in --monitor once left the run without best.pt (exported from its last weights)
    # and said nothing; early stopping raised a KeyError traceback.
    from trainer.errors import ConfigError

    for hooks in ([CheckpointHook(tmp_path / "a")], [EarlyStoppingHook(patience=1)]):
        engine = make_engine(hooks, max_epochs=2, monitor="val/accuracy")
        with pytest.raises(ConfigError, match=r"--monitor val/accuracy: .*val/acc, "):
            engine.fit()
    make_engine([CheckpointHook(tmp_path / "b")], max_epochs=1, monitor="val/loss", mode="min").fit()
    assert (tmp_path / "b" / "checkpoints" / "best.pt").is_file()


def test_early_stopping_without_validation_images_is_refused_before_any_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import FAST_CLI, make_tree
    from tools import train

    flat = make_tree(tmp_path / "flat", splits=())
    out = tmp_path / "run"
    argv = ["--data", str(flat), "--val-fraction", "0", "--early-stopping", "2", "--out", str(out)]
    assert train.main([*argv, *FAST_CLI]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --early-stopping") and "--val-fraction 0" in err
    assert not out.exists()
    # Without early stopping such a run trains: the task's monitor (val/acc, which the CLI
    # passes on) is absent, not an error, when there is no validation.
    assert train.main([*argv[:-4], "--out", str(out), "--no-export", *FAST_CLI]) == 0
    assert len(json.loads((out / "args.json").read_text())) > 0
