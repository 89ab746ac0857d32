"""CheckpointHook: last.pt every epoch, best.pt and the top-k by a monitored metric."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.checkpoint import save_checkpoint
from trainer.distributed import get_world_size, is_global_zero, rank_zero_only
from trainer.errors import Interrupted, OutputError
from trainer.hook import Hook
from trainer.io import atomic_link, clean_stale_temp_files

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")


class CheckpointHook(Hook):
    """Saves ``checkpoints/last.pt`` each epoch, ``best.pt`` on improvement, and the top-k.

    Every file is written atomically, so a crash leaves the previous checkpoint whole. The
    checkpoint is serialised once per epoch: ``best.pt`` and the top-k files are hard links to
    that epoch's ``last.pt`` (copies where the file system has no links). With EMA
    on, the monitored metric is the EMA model's (validation uses it), and both raw and EMA
    weights are in every file. A failed save (disk full, read-only folder) stops the run: a
    run that cannot checkpoint would lose its work silently. Under DDP every rank runs the hook
    (building the checkpoint gathers each rank's RNG state) and rank 0 writes the files.

    Args:
        out_dir: the run folder; files go to ``out_dir/checkpoints``.
        monitor: metric in ``engine.state.metrics``; defaults to the engine's ``monitor``.
        mode: "max" or "min"; defaults to the engine's ``mode``.
        top_k: also keep the k best epochs as ``epoch_XXX.pt``; 0 keeps none.

    Example:
        >>> Engine(model, data, hooks=[CheckpointHook("runs/a", top_k=3)]).fit()
    """

    order = 90

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        monitor: str | None = None,
        mode: str | None = None,
        top_k: int = 0,
    ) -> None:
        self.dir = Path(out_dir) / "checkpoints"
        self.monitor, self.mode, self.top_k = monitor, mode, top_k
        self.best_value: float | None = None
        self.top: list[tuple[float, str]] = []  # (value, file name), best first

    @rank_zero_only
    def on_fit_start(self, engine: Engine) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(self.dir)

    def on_train_epoch_end(self, engine: Engine) -> None:
        monitor = self.monitor or engine.monitor
        mode = self.mode or engine.mode
        value = engine.state.metrics.get(monitor)
        improved = (
            value is not None
            and not math.isnan(value)
            and (
                self.best_value is None
                or (value > self.best_value if mode == "max" else value < self.best_value)
            )
        )
        if improved:
            self.best_value = value
        ckpt = engine.checkpoint_dict()  # a collective under DDP: every rank builds it
        if not is_global_zero():
            return  # the ranks hold the same weights; rank 0 writes them
        try:
            # Serialised once: best.pt and the top-k are links to (or copies of) this file.
            last = save_checkpoint(ckpt, self.dir / "last.pt")
            if improved:
                atomic_link(last, self.dir / "best.pt")
            if self.top_k > 0 and value is not None and not math.isnan(value):
                self._update_top_k(last, value, engine.state.epoch, mode)
        except OSError as e:
            # A run that cannot checkpoint would lose its work silently: stop it.
            raise OutputError(
                f"could not write a checkpoint in {self.dir} ({e.strerror or e}). The files "
                "already there are intact (writes are atomic). Free some space or make the "
                "folder writable, then continue with --resume; or pick another --out."
            ) from e

    def _update_top_k(self, last: Path, value: float, epoch: int, mode: str) -> None:
        name = f"epoch_{epoch:03d}.pt"
        self.top.append((value, name))
        self.top.sort(key=lambda t: t[0], reverse=(mode == "max"))
        if name in [n for _, n in self.top[: self.top_k]]:
            atomic_link(last, self.dir / name)
        for _, old in self.top[self.top_k :]:
            (self.dir / old).unlink(missing_ok=True)
        self.top = self.top[: self.top_k]

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        """Emergency checkpoint: ``checkpoints/interrupted.pt``, the weights as they are now.

        ``last.pt`` keeps the last finished epoch, so ``--resume`` stays exact; this file keeps
        the work of the unfinished one. Under DDP only a signal (which reaches every rank)
        triggers it, since building a checkpoint is a collective the other ranks may not join.
        """
        if get_world_size() > 1 and not isinstance(exception, Interrupted):
            return
        path = self.dir / "interrupted.pt"
        try:
            ckpt = engine.checkpoint_dict()
            if is_global_zero():
                save_checkpoint(ckpt, path)
                log.warning("saved an emergency checkpoint to %s", path)
        except Exception as e:  # the original error is the one to report
            log.error("could not save an emergency checkpoint to %s: %s", path, e)

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "top": [list(t) for t in self.top]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value = state.get("best_value")
        self.top = [(float(v), str(n)) for v, n in state.get("top", [])]
