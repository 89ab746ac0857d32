"""CheckpointHook: last.pt every epoch, best.pt and the top-k by a monitored metric."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.checkpoint import host_copy, save_checkpoint
from trainer.distributed import get_world_size, is_global_zero, rank_zero_only
from trainer.errors import CheckpointError, Interrupted, OutputError
from trainer.hook import Hook
from trainer.io import atomic_link, clean_stale_temp_files, free_space, is_disk_full
from trainer.metrics import is_better
from trainer.run_files import BEST_PT, CHECKPOINTS, INTERRUPTED_PT, LAST_PT

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")

_TOP_K_NAME = re.compile(r"epoch_(\d+)\.pt")


class CheckpointHook(Hook):
    """Saves ``checkpoints/last.pt`` each epoch, ``best.pt`` on improvement, and the top-k.

    Every file is written atomically, so a crash leaves the previous checkpoint whole. The
    checkpoint is serialised once per epoch, on a background thread while the next epoch
    trains (the epoch end only copies the state to the host); ``best.pt`` and the top-k files
    are hard links to that epoch's ``last.pt`` (copies where there are no links). One write
    is in flight at most; the next epoch end, the fit's end and an exception wait for it. A
    failed save (full disk, read-only folder) stops the run rather than lose work silently.
    With EMA on, the monitored metric is the EMA model's; both weights are in every file.

    With ``val_every`` below an epoch, a validation inside an epoch that improves writes
    ``best.pt`` alone (that step's weights, not a resume point); last.pt and top-k: epoch ends.

    ``last.pt`` is written first and holds the bookkeeping (best epoch, top-k list), so a crash
    between it and its links leaves ``best.pt`` or a top-k file behind. On resume they are put
    back in step: relinked to the checkpoint resumed from, ``epoch_XXX.pt`` files outside the
    top-k removed, a ``best.pt`` of an epoch the resumed run never reached removed too. A
    resume from a checkpoint older than the folder's latest is refused (``check_latest``):
    those steps would delete later files. Under DDP every rank runs the hook (the checkpoint
    gathers each rank's RNG state); rank 0 writes.

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
        self.dir = Path(out_dir) / CHECKPOINTS
        self.monitor, self.mode, self.top_k = monitor, mode, top_k
        self.best_value: float | None = None
        self.best_epoch: int | None = None  # the epoch best.pt holds
        self.best_mid_epoch = False  # best.pt was saved inside best_epoch, not at its end
        self.top: list[tuple[float, str]] = []  # (value, file name), best first
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None  # the epoch's files, being written
        self.write_cpu_s = 0.0  # CPU time the background writes took, for benchmarks
        self._from_step: int | None = None  # the step training started from, in this fit

    @rank_zero_only
    def on_fit_start(self, engine: Engine) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(self.dir)

    def on_train_start(self, engine: Engine) -> None:
        self._from_step = engine.state.step

    def on_validation_end(self, engine: Engine) -> None:
        """A validation inside the epoch (``val_every``) that improves: ``best.pt`` alone."""
        value = engine.state.metrics.get(self.monitor or engine.monitor)
        if engine.state.mid_epoch and is_better(value, self.best_value, self.mode or engine.mode):
            self.wait()
            self.best_value, self.best_epoch, self.best_mid_epoch = value, engine.state.epoch, True
            ckpt = engine.checkpoint_dict()  # a collective under DDP: every rank builds it
            if is_global_zero():
                self._submit(host_copy(ckpt), [], [], BEST_PT)

    def on_train_epoch_end(self, engine: Engine) -> None:
        self.wait()  # the previous epoch's files first: one write in flight at most
        monitor = self.monitor or engine.monitor
        mode = self.mode or engine.mode
        value = engine.state.metrics.get(monitor)
        improved = is_better(value, self.best_value, mode)
        if improved:
            self.best_value, self.best_epoch = value, engine.state.epoch
            self.best_mid_epoch = False
        # Serialised once: best.pt and the top-k are links to (or copies of) last.pt.
        links = [BEST_PT] if improved else []
        stale: list[str] = []
        if self.top_k > 0 and value is not None and not math.isnan(value):
            name = f"epoch_{engine.state.epoch:03d}.pt"
            self.top.append((value, name))
            self.top.sort(key=lambda t: t[0], reverse=(mode == "max"))
            if name in [n for _, n in self.top[: self.top_k]]:
                links.append(name)
            stale = [n for _, n in self.top[self.top_k :]]
            self.top = self.top[: self.top_k]
        # After the bookkeeping: last.pt holds this epoch's best and top-k, which a resume
        # (and _reconcile) go by.
        ckpt = engine.checkpoint_dict()  # a collective under DDP: every rank builds it
        if not is_global_zero():
            return  # the ranks hold the same weights; rank 0 writes them
        self._submit(host_copy(ckpt), links, stale, LAST_PT)

    def _submit(self, ckpt: dict[str, Any], links: list[str], stale: list[str], name: str) -> None:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-writer")
        self._pending = self._writer.submit(self._write, ckpt, links, stale, name)

    def _write(self, ckpt: dict[str, Any], links: list[str], stale: list[str], name: str) -> None:
        """On the writer thread: ``name``, then its links, then the files out of the top-k."""
        cpu = time.thread_time()
        try:
            last = save_checkpoint(ckpt, self.dir / name)
            for link in links:
                atomic_link(last, self.dir / link)
            for old in stale:
                remove_file(self.dir / old)
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
            space = f"; {free_space(self.dir)}" if is_disk_full(e) else ""
            raise OutputError(
                f"could not write a checkpoint in {self.dir} ({e.strerror or e}{space}). The files "
                "already there are intact (writes are atomic). Free some space or make the "
                "folder writable, then continue with --resume; or pick another --out."
            ) from e

    def on_fit_end(self, engine: Engine) -> None:
        self._from_step = None
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
        the work of the unfinished one (a resume refuses it when it was saved inside an epoch).
        None before a training step of this fit (a refused start, the sanity check): there is
        no such work. Under DDP only a signal (which reaches every rank) triggers it, since
        building a checkpoint is a collective the other ranks may not join.
        """
        try:
            self.wait()  # the last finished epoch's files, whole
        except Exception as e:  # the original error is the one to report
            log.error("%s", e)
        finally:
            self._close()
        from_step, self._from_step = self._from_step, None
        if from_step is None or engine.state.step == from_step:
            return
        if get_world_size() > 1 and not isinstance(exception, Interrupted):
            return
        path = self.dir / INTERRUPTED_PT
        try:
            ckpt = engine.checkpoint_dict()
            if is_global_zero():
                save_checkpoint(ckpt, path)
                log.warning("saved an emergency checkpoint to %s", path)
        except Exception as e:  # the original error is the one to report
            log.error("could not save an emergency checkpoint to %s: %s", path, e)

    def on_load_checkpoint(self, engine: Engine, checkpoint: dict[str, Any]) -> None:
        """Resuming: bring best.pt and the top-k files in line with the loaded state."""
        if is_global_zero() and engine.resume_path is not None:
            self._reconcile(engine.resume_path, len(engine.state.history) - 1)

    def _reconcile(self, source: Path, epoch: int) -> None:
        """Make the files agree with the bookkeeping of ``source``, the checkpoint of ``epoch``."""
        check_latest(source, self.dir, epoch + 1)  # never delete a later epoch's files
        self.dir.mkdir(parents=True, exist_ok=True)
        self.top = self.top[: max(self.top_k, 0)]  # a resume may ask for a smaller k
        for value, name in list(self.top):
            if _epoch_of(name) == epoch:
                self._relink(source, name)
            elif not (self.dir / name).is_file():
                log.warning("%s is missing; it leaves the top-%d", self.dir / name, self.top_k)
                self.top.remove((value, name))
        kept = {name for _, name in self.top}
        for path in self.dir.glob("epoch_*.pt"):
            if _TOP_K_NAME.fullmatch(path.name) and path.name not in kept:
                remove_file(path)
        best, twin = self.dir / BEST_PT, f"epoch_{self.best_epoch or 0:03d}.pt"
        if self.best_epoch is None:
            return  # no best yet (or a checkpoint from before best_epoch was kept)
        if self.best_epoch == epoch and not self.best_mid_epoch:
            self._relink(source, best.name)
        elif twin in kept and not self.best_mid_epoch:
            self._relink(self.dir / twin, best.name)
        elif best.is_file() and _saved_epoch(best) != self.best_epoch:
            # Resumed from an earlier checkpoint: this best.pt is of an abandoned future.
            log.warning(
                "removing %s: it is not epoch %d, the resumed run's best", best, self.best_epoch
            )
            remove_file(best)

    def _relink(self, source: Path, name: str) -> None:
        dst = self.dir / name
        with contextlib.suppress(OSError):
            if os.path.samefile(source, dst):
                return
        atomic_link(source, dst)

    @property
    def best_path(self) -> Path:
        return self.dir / BEST_PT

    @property
    def last_path(self) -> Path:
        return self.dir / LAST_PT

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_mid_epoch": self.best_mid_epoch,
            "top": [list(t) for t in self.top],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the bookkeeping. A checkpoint may come from anyone: the top-k list keeps
        only names this hook writes (``epoch_NNN.pt``, in ``checkpoints/``), since a resume
        deletes the files that leave it; any other entry is dropped with a warning."""
        value, epoch = state.get("best_value"), state.get("best_epoch")
        self.best_value = float(value) if isinstance(value, (int, float)) else None
        self.best_epoch = epoch if isinstance(epoch, int) and epoch >= 0 else None
        self.best_mid_epoch = bool(state.get("best_mid_epoch", False))
        self.top = []
        for entry in state.get("top", []):
            pair = _top_entry(entry)
            if pair is None:
                log.warning(
                    "ignoring %r in the checkpoint's top-k list: not a checkpoint file name "
                    "of %s (epoch_NNN.pt); nothing outside it is touched", entry, self.dir,
                )  # fmt: skip
            else:
                self.top.append(pair)


def check_latest(source: Path, ckpt_dir: Path, epochs_done: int) -> None:
    """Raise ``CheckpointError`` when ``ckpt_dir`` holds a checkpoint of more finished epochs
    than ``epochs_done`` (those of ``source``, the checkpoint resumed from): resuming there
    would replace or delete it. ``last.pt`` is read (its small pickle only), ``epoch_NNN.pt``
    go by name; ``best.pt`` and ``interrupted.pt`` may hold part of an unfinished epoch that
    a resume from ``last.pt`` rightly drops, so they do not count."""
    last = ckpt_dir / LAST_PT
    later = [(_finished_epochs(last), last)] if last.is_file() else []
    later += [
        (n + 1, p) for p in ckpt_dir.glob("epoch_*.pt") if (n := _epoch_of(p.name)) is not None
    ]
    later = [(n, p) for n, p in later if n > epochs_done]
    if not later:
        return
    n, path = max(later)
    run = ckpt_dir.parent
    raise CheckpointError(
        f"{source} holds {epochs_done} finished epoch(s), but the run in {run} went on: {path} "
        f"holds {n}. Resuming from it there would delete or replace the later checkpoints. "
        f"To continue from it, branch off into a new run folder: --resume {source} --out "
        f"NEW_FOLDER (or fit(resume=...) with hooks writing elsewhere); to continue the run, "
        f"--resume {run}."
    )


def _finished_epochs(path: Path) -> int:
    """How many epochs the checkpoint at ``path`` finished (mmap: the small pickle only)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return len(ckpt["state"]["history"])
    except Exception:  # unreadable: it cannot be resumed from either, nor does it count
        return -1


def remove_file(path: Path) -> None:
    """Delete ``path`` if it exists (one place to stop at, for the crash tests)."""
    path.unlink(missing_ok=True)


def _top_entry(entry: Any) -> tuple[float, str] | None:
    """A top-k entry ``(value, "epoch_NNN.pt")`` read from a checkpoint, or None if it is not
    one: a path, ``..``, another file's name, or not a (number, name) pair."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        return None
    value, name = entry
    if not isinstance(value, (int, float)) or not isinstance(name, str):
        return None
    return (float(value), name) if _TOP_K_NAME.fullmatch(name) else None


def _epoch_of(name: str) -> int | None:
    match = _TOP_K_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def _saved_epoch(path: Path) -> int:
    """The epoch a checkpoint file holds; mmap reads the small pickle, not the tensors."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["state"]["epoch"])
    except Exception:  # unreadable or foreign: not the best checkpoint of this run either
        return -1
