"""--val-every: validation inside the epoch (trainer/val_check.py and the engine's use of it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from hooks.checkpoint import CheckpointHook
from hooks.early_stopping import EarlyStoppingHook
from tests.conftest import StandInData, make_engine
from trainer.checkpoint import check_resumable, load_checkpoint
from trainer.engine import Engine
from trainer.errors import CheckpointError
from trainer.hook import Hook
from trainer.val_check import ValCheck, val_every_problem


def _due_steps(val_every: float, steps_per_epoch: int, epochs: int) -> list[int]:
    check = ValCheck(val_every, steps_per_epoch)
    due = []
    for epoch in range(epochs):
        for k in range(1, steps_per_epoch + 1):
            step = epoch * steps_per_epoch + k
            # Twice per step, as with gradient accumulation's non-stepping batches.
            if check.due(step, k) | check.due(step, k):
                due.append(step)
    return due


@pytest.mark.parametrize(
    ("val_every", "steps", "expected"),
    [
        (1.0, 4, []),  # the default: epoch ends only
        (0.5, 4, [2, 6]),  # halves; the second half ends with the epoch's own validation
        (0.25, 8, [2, 4, 6, 10, 12, 14]),
        (0.1, 4, [1, 2, 3, 5, 6, 7]),  # at least one step apart
        (3, 4, [3, 6, 9]),  # steps of the run, across epochs; 12 is an epoch end
        (5, 4, [5]),
    ],
)
def test_checks_fall_on_their_steps_and_never_on_an_epoch_end(
    val_every: float, steps: int, expected: list[int]
) -> None:
    assert _due_steps(val_every, steps, epochs=2 if steps == 8 else 3)[: len(expected)] == expected
    assert all(s % steps for s in _due_steps(val_every, steps, epochs=3))


@pytest.mark.parametrize("value", [0, -0.5, 2.5, math.nan, math.inf])
def test_bad_values_are_refused(value: float) -> None:
    assert val_every_problem(value) is not None
    with pytest.raises(ValueError, match="val_every"):
        make_engine(val_every=value)


@pytest.mark.parametrize("value", [0.25, 1, 1.0, 2, 7])
def test_good_values_pass(value: float) -> None:
    assert val_every_problem(value) is None


class _Validations(Hook):
    """Records each validation as (phase, mid_epoch, step) and sets ``score`` from a list."""

    order = 0  # before the hooks that read ``score``

    def __init__(self, scores: list[float] | None = None) -> None:
        self.seen: list[tuple[str, bool, int]] = []
        self.scores = scores

    def on_validation_end(self, engine: Engine) -> None:
        s = engine.state
        if s.phase == "val" and self.scores is not None:
            s.metrics["score"] = self.scores[sum(p == "val" for p, _, _ in self.seen)]
        self.seen.append((s.phase, s.mid_epoch, s.step))


def _engine(hooks: list[Hook], val_every: float, **kwargs: Any) -> Engine:
    # 64 training images in batches of 8, two per step: 4 optimizer steps per epoch; 24
    # validation images, 3 batches (the loop must get its own batch count back after one).
    data = StandInData(["c0", "c1", "c2"], [22, 21, 21], [8, 8, 8], batch_size=8, sampler=None)
    return make_engine(
        hooks, data=data, val_every=val_every, sanity_steps=1, accumulate=2, **kwargs
    )


def test_mid_epoch_validation_runs_the_validation_hooks_once_per_check() -> None:
    rec = _Validations()
    engine = _engine([rec], val_every=0.25, max_epochs=2)
    engine.fit()
    val = [(mid, step) for phase, mid, step in rec.seen if phase == "val"]
    # Steps 1-3 inside each epoch, then the epoch end's own (step 4): not twice at step 4.
    assert val == [(True, 1), (True, 2), (True, 3), (False, 4),
                   (True, 5), (True, 6), (True, 7), (False, 8)]  # fmt: skip
    assert engine.state.step == 8  # the training loop went on as without the checks
    assert [r["step"] for r in engine.state.history] == [4, 8]
    assert engine.state.phase == "idle" and not engine.state.mid_epoch


def test_mid_epoch_validation_leaves_training_as_it_was() -> None:
    """The same weights whether or not validation ran in between (eval mode, no grad)."""
    plain = _engine([], val_every=1.0, max_epochs=2)
    plain.fit()
    checked = _engine([], val_every=0.5, max_epochs=2)
    checked.fit()
    weights = zip(
        plain.model.state_dict().values(), checked.model.state_dict().values(), strict=True
    )
    assert all(a.equal(b) for a, b in weights)
    assert plain.state.history[-1]["train/loss"] == checked.state.history[-1]["train/loss"]


def test_best_follows_mid_epoch_checks_and_best_pt_is_written_then(tmp_path: Path) -> None:
    # Validations at steps 2, 4 (epoch end), 6, 8 (epoch end): the best is at step 6.
    rec = _Validations(scores=[1.0, 2.0, 5.0, 3.0])
    ckpt = CheckpointHook(tmp_path, monitor="score", mode="max")
    engine = _engine([rec, ckpt], val_every=0.5, max_epochs=2, monitor="score")
    engine.fit()
    assert engine.state.best is not None
    assert (engine.state.best["epoch"], engine.state.best["step"]) == (1, 6)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["state"]["step"] == 6 and best["state"]["mid_epoch"]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["state"]["step"] == 8  # the resumable file stays at the epoch end
    assert ckpt.best_value == 5.0 and ckpt.best_mid_epoch
    # A best.pt from inside an epoch is not a resume point.
    with pytest.raises(CheckpointError, match="middle of epoch 2"):
        check_resumable(best, engine.data.classes, tmp_path / "checkpoints" / "best.pt")


def test_resume_keeps_a_mid_epoch_best_pt(tmp_path: Path) -> None:
    ckpt = CheckpointHook(tmp_path, monitor="score", mode="max")
    rec = _Validations(scores=[1.0, 2.0, 5.0, 3.0])
    _engine([rec, ckpt], val_every=0.5, max_epochs=2, monitor="score").fit()
    again = CheckpointHook(tmp_path, monitor="score", mode="max")
    resumed = _engine([_Validations(scores=[0.0] * 4), again], val_every=0.5, max_epochs=3,
                      monitor="score")  # fmt: skip
    resumed.load_checkpoint(tmp_path)  # the end of epoch 2; best.pt is of step 6, inside it
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["state"]["step"] == 6


def test_early_stopping_counts_mid_epoch_checks_and_stops_there() -> None:
    rec = _Validations(scores=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    stop = EarlyStoppingHook("score", patience=2, mode="max")
    engine = _engine([rec, stop], val_every=0.5, max_epochs=3)
    engine.fit()
    # Checks at steps 2, 4 (epoch end), 6: the third without improvement stops at step 6,
    # and the epoch ends there without validating the same weights again.
    assert [step for phase, _, step in rec.seen if phase == "val"] == [2, 4, 6]
    assert engine.state.step == 6 and len(engine.state.history) == 2
    assert engine.state.stop_reason.startswith("early stopping")
    assert engine.state.history[-1]["score"] == 1.0
