"""ArtifactWriter: one background thread per run that draws and writes plots and reports.

The engine owns one (``engine.artifacts``) and closes it (every job run, the thread ended) when
``fit``, ``validate`` or ``test`` ends, and on an exception, so every file a hook asked for
exists when they return.
Hooks hand it a function that draws and writes one file; the training loop never waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

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


class ArtifactWriter:
    """Runs artefact jobs one at a time, in submission order, on a background thread.

    A ``ThreadPoolExecutor`` with one worker, this writer's own (never shared across
    writers), started at the first ``submit`` and shut down by ``close``. Each job runs
    inside ``guarded``, so a failure is logged as a warning naming its file and the next
    job runs; no exception is left in a future nobody reads.

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
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0  # the process that started the pool
        self._replaceable: dict[str, Future[None]] = {}  # the latest replacing job, by file
        self._queued: list[tuple[Future[None], Callable[[], None], str]] = []  # not done yet

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
        with self._lock:
            if key is not None and key in self._replaceable:
                # Dropped if it has not started; one that has started runs to its end.
                self._replaceable.pop(key).cancel()
            future = self._executor().submit(self._run_job, fn, path)
            if key is not None:
                self._replaceable[key] = future
            # Done ones (a dropped one is: cancelled) leave; close() runs what is left.
            self._queued = [q for q in self._queued if not q[0].done()]
            self._queued.append((future, fn, path))

    def flush(self) -> None:
        """Wait until every submitted job has run."""
        with self._lock:
            pool = self._pool if self._pid == os.getpid() else None
            # One worker runs jobs in order: once this marker has run, so has every job
            # submitted before it.
            marker = pool.submit(lambda: None) if pool is not None else None
        if marker is not None:
            marker.result()

    def close(self) -> None:
        """Run every job submitted, then end the thread (the next ``submit`` starts a new one),
        so an engine that is done leaves no idle thread behind.

        The jobs not started yet run here, in the caller's thread and in order: the writer's
        low priority keeps it off the cores while training has work, and at close the caller
        only waits; on a busy machine a nice-19 thread could wait long for a core.
        """
        with self._lock:
            pool, self._pool = self._pool, None
            queued, self._queued = self._queued, []
            self._replaceable.clear()
        if pool is None or self._pid != os.getpid():
            return
        pool.shutdown(wait=False, cancel_futures=True)  # the jobs not started are ours now
        wait([f for f, _, _ in queued if not f.cancelled()])  # the one under way, if any
        for future, fn, path in queued:
            if future.cancelled():  # in submission order, after the job that was under way
                self._job(fn, path)
        pool.shutdown(wait=True)  # the thread ends

    def _executor(self) -> ThreadPoolExecutor:
        # Started lazily, and again in a forked child, where the parent's thread is gone.
        if self._pool is None or self._pid != os.getpid():
            self._pool = ThreadPoolExecutor(1, initializer=_name_and_lower_priority)
            self._pid = os.getpid()
        return self._pool

    def _run_job(self, fn: Callable[[], None], path: str) -> None:
        try:
            self._job(fn, path)
        except BaseException:  # a job must never kill the writer
            log.warning("artefact job for %s failed", path, exc_info=True)

    def _job(self, fn: Callable[[], None], path: str) -> None:
        """``fn`` under ``guarded``, its CPU time counted (a Ctrl-C still goes through)."""
        cpu = time.thread_time()
        try:
            with guarded(path):
                fn()
        finally:
            self.cpu_seconds += time.thread_time() - cpu


def _name_and_lower_priority() -> None:
    threading.current_thread().name = "artifacts"  # as tracebacks and py-spy show it
    _lower_priority()


def _lower_priority() -> None:
    """Renice the calling thread to ``WRITER_NICE`` (Linux only; elsewhere it keeps its own)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # a sandbox may refuse; plots then just compete
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
