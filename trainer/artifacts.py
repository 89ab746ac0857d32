"""ArtifactWriter: one background thread per run that draws and writes plots and reports.

The engine owns one (``engine.artifacts``) and closes it (every job run, the thread ended) when
``fit``, ``validate`` or ``test`` ends, and on an exception, so every file a hook asked for
exists when they return.
Hooks hand it a function that draws and writes one file; the training loop never waits.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("trainer.hooks")

# The writer thread's niceness on Linux, where each thread is scheduled on its own: plots
# wait while the training threads have work, instead of taking a share of their cores.
WRITER_NICE = 19


@contextlib.contextmanager
def guarded(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failure to build or write the artefact at ``path`` into a warning.

    An observability artefact is never worth a run: a full disk, a read-only folder or a
    plotting error logs a warning naming the file, and training goes on.

    Example:
        >>> with guarded(out / "plots/loss.png"):
        ...     save_png(fig, out / "plots/loss.png")
    """
    try:
        yield
    except OSError as e:
        log.warning("could not write %s (%s); training goes on", path, e)
    except Exception as e:  # most likely a plotting bug: keep the traceback
        log.warning(
            "could not write %s (%s: %s); training goes on", path, type(e).__name__, e,
            exc_info=True,
        )  # fmt: skip


class _Job:
    __slots__ = ("fn", "key", "path")

    def __init__(self, fn: Callable[[], None], path: str, key: str | None) -> None:
        self.fn, self.path, self.key = fn, path, key


class ArtifactWriter:
    """Runs artefact jobs one at a time, in submission order, on a background thread.

    Args:
        background: False runs each job inline, where it is submitted (for debugging: a
            traceback at the caller, pdb works).

    Attributes:
        cpu_seconds: CPU time the jobs took so far (for benchmarks).

    Example:
        >>> writer = ArtifactWriter()
        >>> counts = matrix.numpy().copy()  # a copy: the job runs later
        >>> writer.submit(lambda: save_png(plot(counts), path), path)
        >>> writer.flush()  # the file exists now
    """

    def __init__(self, background: bool = True) -> None:
        self.background = background
        self.cpu_seconds = 0.0
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued: dict[str, _Job] = {}  # replaceable jobs not started yet, by file
        self._unfinished = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    def submit(
        self, fn: Callable[[], None], path: str | os.PathLike[str], *, replace: bool = False
    ) -> None:
        """Queue ``fn``, which draws and writes the file at ``path``.

        ``fn`` must not touch the engine: give it copies of what it needs. A failure logs a
        warning naming ``path``. Jobs run in submission order, so one that reads another's
        file (the report) runs after it when submitted later.

        Args:
            fn: draws and writes the artefact.
            path: the file ``fn`` writes, named in warnings.
            replace: ``fn`` rewrites the whole file (a plot redrawn every epoch): a queued,
                not yet started job for the same file is dropped and this one queued at the
                end, so a writer that fell behind draws the file once, with the newest data,
                and still after every job submitted before it (the final report sees the
                last epoch's plots).
        """
        path = os.fspath(path)
        if not self.background:
            self._run_job(fn, path)
            return
        key = os.path.abspath(path) if replace else None
        with self._cond:
            older = self._queued.pop(key, None) if key is not None else None
            if older is not None:
                self._queue.remove(older)
                self._unfinished -= 1
            job = _Job(fn, path, key)
            if key is not None:
                self._queued[key] = job
            self._queue.append(job)
            self._unfinished += 1
            # Started lazily, and again in a forked child, where the parent's thread is gone.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="artifacts", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every submitted job has run."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                return
            self._cond.wait_for(lambda: self._unfinished == 0)

    def close(self) -> None:
        """``flush``, then end the thread (the next ``submit`` starts a new one), so an engine
        that is done leaves no idle thread behind."""
        with self._cond:
            thread, self._closing = self._thread, True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            self._thread, self._closing = None, False

    def _loop(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                if not self._queue:
                    return  # closing, and nothing left to run
                job = self._queue.popleft()
                if job.key is not None:
                    del self._queued[job.key]  # a job submitted from now on queues anew
            try:
                self._run_job(job.fn, job.path)
            finally:
                with self._cond:
                    self._unfinished -= 1
                    self._cond.notify_all()

    def _run_job(self, fn: Callable[[], None], path: str) -> None:
        cpu = time.thread_time()
        try:
            with guarded(path):
                fn()
        except BaseException:  # a job must never kill the writer
            log.warning("artefact job for %s failed", path, exc_info=True)
        finally:
            self.cpu_seconds += time.thread_time() - cpu


def _lower_priority() -> None:
    """Renice the calling thread to ``WRITER_NICE`` (Linux only; elsewhere it keeps its own)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # a sandbox may refuse; plots then just compete
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
