"""CheckpointHook: last.pt every epoch, best.pt and the top-k by a monitored metric."""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.checkpoint import host_copy, save_checkpoint
from trainer.distributed import get_world_size, is_global_zero, rank_zero_only
from trainer.errors import Interrupted, OutputError
from trainer.hook import Hook
from trainer.io import atomic_link, clean_stale_temp_files
from trainer.metrics import is_better

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")


class CheckpointHook(Hook):
    """Saves ``checkpoints/last.pt`` each epoch, ``best.pt`` on improvement, and the top-k.

    Every file is written atomically, so a crash leaves the previous checkpoint whole. The
    checkpoint is serialised once per epoch: ``best.pt`` and the top-k files are hard links to
    that epoch's ``last.pt`` (copies where the file system has no links). The files are
    written on a background thread while the next epoch trains: the epoch end only copies
    the state to the host (on an H200, saving resnet50 took 0.7 s of every epoch end). At
    most one write is in flight; the next epoch end, the fit's end and an exception wait
    for it, so every file exists when ``fit`` returns. With EMA
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
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None  # the epoch's files, being written
        self.write_cpu_s = 0.0  # CPU time the background writes took, for benchmarks

    @rank_zero_only
    def on_fit_start(self, engine: Engine) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(self.dir)

    def on_train_epoch_end(self, engine: Engine) -> None:
        self.wait()  # the previous epoch's files first: one write in flight at most
        monitor = self.monitor or engine.monitor
        mode = self.mode or engine.mode
        value = engine.state.metrics.get(monitor)
        improved = is_better(value, self.best_value, mode)
        if improved:
            self.best_value = value
        ckpt = engine.checkpoint_dict()  # a collective under DDP: every rank builds it
        if not is_global_zero():
            return  # the ranks hold the same weights; rank 0 writes them
        # Serialised once: best.pt and the top-k are links to (or copies of) last.pt.
        links = ["best.pt"] if improved else []
        stale: list[str] = []
        if self.top_k > 0 and value is not None and not math.isnan(value):
            name = f"epoch_{engine.state.epoch:03d}.pt"
            self.top.append((value, name))
            self.top.sort(key=lambda t: t[0], reverse=(mode == "max"))
            if name in [n for _, n in self.top[: self.top_k]]:
                links.append(name)
            stale = [n for _, n in self.top[self.top_k :]]
            self.top = self.top[: self.top_k]
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")
        self._pending = self._writer.submit(self._write, host_copy(ckpt), links, stale)

    def _write(self, ckpt: dict[str, Any], links: list[str], stale: list[str]) -> None:
        """On the writer thread: last.pt, then its links, then the files out of the top-k."""
        cpu = time.thread_time()
        try:
            last = save_checkpoint(ckpt, self.dir / "last.pt")
            for name in links:
                atomic_link(last, self.dir / name)
            for name in stale:
                (self.dir / name).unlink(missing_ok=True)
        finally:
            self.write_cpu_s += time.thread_time() - cpu

    def wait(self) -> None:
        """Wait for the checkpoint being written; a failed write stops the run."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except OSError as e:
            # A run that cannot checkpoint would lose its work silently: stop it.
            raise OutputError(
                f"could not write a checkpoint in {self.dir} ({e.strerror or e}). The files "
                "already there are intact (writes are atomic). Free some space or make the "
                "folder writable, then continue with --resume; or pick another --out."
            ) from e

    def on_fit_end(self, engine: Engine) -> None:
        try:
            self.wait()  # the files exist when fit returns (export reads best.pt next)
        finally:
            self._close()

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        """Emergency checkpoint: ``checkpoints/interrupted.pt``, the weights as they are now.

        ``last.pt`` keeps the last finished epoch, so ``--resume`` stays exact; this file keeps
        the work of the unfinished one. Under DDP only a signal (which reaches every rank)
        triggers it, since building a checkpoint is a collective the other ranks may not join.
        """
        try:
            self.wait()  # the last finished epoch's files, whole
        except Exception as e:  # the original error is the one to report
            log.error("%s", e)
        finally:
            self._close()
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
