"""StepLogHook: ``steps.csv``, a row every N optimizer steps (loss, learning rate, speed)."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.distributed import all_reduce_sum, is_global_zero
from trainer.hook import Hook
from trainer.io import atomic_write_csv
from trainer.run_files import STEPS_CSV

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")

HEADER = ["step", "epoch", "lr", "loss", "img_s"]


class StepLogHook(Hook):
    """A row every ``every`` optimizer steps, in ``engine.state.step_log`` and ``steps.csv``.

    Columns: ``step`` (optimizer steps so far), ``epoch`` (from 0), ``lr`` (the row's last
    step trained with it; the scheduler moves it on after the step),
    ``loss`` (the mean training loss per image since the previous row, over all ranks;
    batches with a NaN or infinite loss left out, as in ``train/loss``) and ``img_s``
    (training images per second since the previous row, over all ranks; the time spent
    validating is left out). The loss adds up on the device in ``on_train_batch_end``, from
    the loss the engine already computed; the host reads it once per row, never per step.

    The rows live in ``engine.state`` (so in checkpoints), and the running sums since the last
    row in this hook's state: a resumed run writes the rows the straight run would. The file
    is rewritten whole and atomically from the rows, on the run's artefact writer.

    Args:
        out_dir: the run folder.
        every: optimizer steps per row.

    Example:
        >>> engine = Engine(model, data, hooks=[StepLogHook("runs/a", every=10)])
        >>> engine.fit()
        >>> engine.state.step_log[-1]  # {"step": ..., "epoch": ..., "lr": ..., "loss": ...}
    """

    order = 20

    def __init__(self, out_dir: str | os.PathLike[str], every: int = 50) -> None:
        if every < 1:
            raise ValueError(f"StepLogHook every must be >= 1, got {every}")
        self.path = Path(out_dir) / STEPS_CSV
        self.every = every
        self._sums: torch.Tensor | None = None  # on the device: loss * images, finite images
        self._saved = [0.0, 0.0]  # the sums a checkpoint held, where the device sums start
        self._images = 0
        self._lr: Any = math.nan  # the lr of the batch being trained
        self._clock = 0.0  # training seconds since the last row, validation left out
        self._since: float | None = None

    def on_train_epoch_start(self, engine: Engine) -> None:
        self._since = time.perf_counter()

    def on_validation_start(self, engine: Engine) -> None:
        self._pause()

    def on_validation_end(self, engine: Engine) -> None:
        if engine.state.mid_epoch:
            self._since = time.perf_counter()

    def on_train_epoch_end(self, engine: Engine) -> None:
        self._pause()  # an epoch that ended without validating

    def _pause(self) -> None:
        if self._since is not None:
            self._clock += time.perf_counter() - self._since
            self._since = None

    def on_train_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None:
        self._lr = engine.optimizer.param_groups[0]["lr"]  # as it is: float() at the row

    def on_train_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        loss, n = outputs["loss"].detach().float(), outputs["targets"].shape[0]
        if self._sums is None:  # from where a checkpoint left off: the straight run's sums
            self._sums = torch.zeros(2, dtype=torch.float64, device=loss.device)
            for i, value in enumerate(self._saved):  # fill_, not torch.tensor: no host copy
                self._sums[i].fill_(value)
        finite = outputs.get("finite")
        if finite is None:  # outputs from elsewhere than the engine's training step
            finite = torch.isfinite(loss)
        self._sums.add_(torch.stack([torch.where(finite, loss, 0.0), finite.float()]), alpha=n)
        self._images += n
        s = engine.state
        logged = s.step_log[-1]["step"] if s.step_log else -1
        # Once per step: with accumulation, batches that do not step keep the same count.
        if s.step > 0 and s.step % self.every == 0 and s.step != logged:
            self._add_row(engine)

    def _add_row(self, engine: Engine) -> None:
        assert self._sums is not None
        self._pause()
        counts = torch.cat([self._sums, self._sums.new_tensor([self._images])])
        loss_sum, counted, images = all_reduce_sum(counts).tolist()  # the one host read
        s = engine.state
        s.step_log.append({
            "step": float(s.step),
            "epoch": float(s.epoch),
            "lr": float(self._lr),
            "loss": loss_sum / counted if counted else math.nan,
            "img_s": images / max(self._clock, 1e-9),
        })  # fmt: skip
        self._sums.zero_()
        self._images, self._clock, self._since = 0, 0.0, time.perf_counter()
        if is_global_zero():
            rows = [[_fmt(k, row[k]) for k in HEADER] for row in s.step_log]
            engine.artifacts.submit(lambda: atomic_write_csv(self.path, HEADER, rows), self.path,
                                    replace=True)  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        # Read at checkpoints only (epoch ends), summed over ranks (every rank builds the
        # checkpoint): the sums since the last row, so that a resumed run's next row averages
        # over the same batches as the straight run's.
        if self._sums is None:
            return {"sums": list(self._saved)}
        return {"sums": all_reduce_sum(self._sums.clone()).tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Rank 0 carries the sums over all ranks; the row's all-reduce adds the others' zeros.
        sums = [float(v) for v in state.get("sums", [0.0, 0.0])]
        self._saved = sums if is_global_zero() else [0.0, 0.0]
        self._sums = None


def _fmt(key: str, value: float) -> str:
    if key in ("step", "epoch"):
        return str(int(value))
    return f"{value:.1f}" if key == "img_s" else f"{value:.6g}"
