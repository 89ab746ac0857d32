"""ProgressBarHook: a tqdm bar per epoch that reads the GPU only every ``refresh_every`` steps."""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Any

from tqdm import TqdmWarning

with warnings.catch_warnings():
    # In Jupyter without ipywidgets, tqdm.auto warns and falls back to the text bar, which is
    # off there (not a terminal), leaving the clean epoch lines: nothing to warn about.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

from trainer.distributed import rank_zero_only
from trainer.hook import Hook

if TYPE_CHECKING:
    import torch

    from trainer.engine import Engine


class ProgressBarHook(Hook):
    """Shows batches, img/s and ETA; loss is read from the device only at refresh points.

    Args:
        refresh_every: steps between reads of the running loss (each read is a host sync).
        disable: hide the bars (e.g. when stdout is not a terminal and you want clean logs).

    Example:
        >>> Engine(model, data, hooks=[ProgressBarHook(refresh_every=50)])
    """

    order = 70

    def __init__(self, refresh_every: int = 20, disable: bool | None = None) -> None:
        self.refresh_every = refresh_every
        self.disable = disable
        self.bar: Any = None

    def _open(self, engine: Engine, desc: str) -> None:
        self.bar = tqdm(
            total=engine.state.num_batches,
            desc=desc,
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=self.disable,
            file=sys.stderr,
        )

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @rank_zero_only  # under DDP, only rank 0 shows bars and epoch lines
    def on_train_epoch_start(self, engine: Engine) -> None:
        s = engine.state
        self._open(engine, f"epoch {s.epoch + 1}/{s.max_epochs}")

    def on_train_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if (batch_idx + 1) % self.refresh_every == 0:
            # The one host read of the step path, at a refresh point only.
            self.bar.set_postfix(loss=f"{outputs['loss'].item():.4f}", refresh=False)

    @rank_zero_only  # under DDP, only rank 0 shows bars and epoch lines
    def on_validation_epoch_start(self, engine: Engine) -> None:
        if engine.state.phase == "sanity" or engine.state.mid_epoch:
            return  # inside an epoch (--val-every) the epoch's bar stays, and waits
        self._close()
        self._open(engine, "  validating")

    def on_validation_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        if self.bar is not None and not engine.state.mid_epoch:
            self.bar.update(1)

    @rank_zero_only
    def on_validation_end(self, engine: Engine) -> None:
        if engine.state.mid_epoch:  # a --val-every check: one line under the epoch's bar
            m = engine.state.metrics
            parts = [f"  step {engine.state.step}"]
            parts += [f"{k} {m[k]:.4f}" for k in ("val/loss", "val/acc", "val/mAP", "val/macro_f1") if k in m]
            tqdm.write("  ".join(parts), file=sys.stderr)

    @rank_zero_only  # under DDP, only rank 0 shows bars and epoch lines
    def on_train_epoch_end(self, engine: Engine) -> None:
        self._close()
        m = engine.state.metrics
        parts = [f"epoch {engine.state.epoch + 1}/{engine.state.max_epochs}"]
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_top5", "val/mAP"):
            if key in m:
                parts.append(f"{key} {m[key]:.4f}")
        parts.append(f"{m.get('train/img_s', 0):.0f} img/s")
        if engine.state.is_best:
            parts.append("*best*")
        tqdm.write("  ".join(parts), file=sys.stderr)

    def on_fit_end(self, engine: Engine) -> None:
        self._close()

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        self._close()
