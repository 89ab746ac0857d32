"""Helpers the plotting hooks share: guarded writes, PNG rendering, labels and image display."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trainer.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

log = logging.getLogger("trainer.hooks")


@contextlib.contextmanager
def guarded(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failure to build or write the artefact at ``path`` into a warning.

    An observability artefact is never worth a run: a full disk, a read-only folder or a
    matplotlib error logs a warning naming the file and training goes on.

    Example:
        >>> with guarded(out / "plots/loss.png"):
        ...     save_png(fig, out / "plots/loss.png")
    """
    try:
        yield
    except OSError as e:
        log.warning("could not write %s (%s); training goes on", path, e)
    except Exception as e:
        # Not an I/O error, so most likely a plotting bug: keep the traceback for the report.
        log.warning(
            "could not write %s (%s: %s); training goes on",
            path,
            type(e).__name__,
            e,
            exc_info=True,
        )


# Run artefact jobs inline instead of on the writer thread: for debugging (a traceback where
# the job was submitted, pdb works). ``ARTIFACTS_SYNC=1`` in the environment sets it.
SYNC = os.environ.get("ARTIFACTS_SYNC", "").strip() not in ("", "0")


# Share of one core that redrawing whole-file artefacts (``replace=True``: history plots, the
# sampler plot, the report) may take, averaged over time. Short epochs would otherwise pay for
# a redraw each: a 0.05 s plot is then redrawn every 10 s at most, and always at ``flush``.
# Each file's first drawing is not held back, so every plot exists early; its CPU counts too.
REFRESH_BUDGET = 0.005


class _Job:
    """One queued artefact job; ``fn`` is swapped in place when a newer job replaces it."""

    __slots__ = ("fn", "key", "path")

    def __init__(
        self, fn: Callable[[], None], path: str | os.PathLike[str], key: str | None
    ) -> None:
        self.fn, self.path, self.key = fn, path, key


class _Writer:
    """One daemon thread that runs artefact jobs in submission order.

    Replaceable jobs wait while the CPU the writer spent on redraws is over ``REFRESH_BUDGET``
    of the time elapsed (a debt paid off at that rate); other jobs pass them meanwhile. A
    path's first job runs in its turn, whatever the debt, and adds to it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: collections.deque[_Job] = collections.deque()
        # Replaceable jobs still waiting, by path: a newer one takes over the older one's slot.
        self._queued: dict[str, _Job] = {}
        self._unfinished = 0
        self._flushing = 0
        self._busy = False  # a job is running
        self._debt, self._debt_at = 0.0, 0.0  # CPU seconds owed, as of time.monotonic()
        self.cpu_s = 0.0  # CPU time all jobs took so far, for benchmarks
        self._drawn: set[str] = set()  # keys of replaceable jobs that have run once
        self._thread: threading.Thread | None = None

    def submit(
        self, fn: Callable[[], None], path: str | os.PathLike[str], replace: bool = False
    ) -> None:
        if SYNC:
            with guarded(path):
                fn()
            return
        key = os.path.abspath(os.fspath(path)) if replace else None
        with self._cond:
            # Started lazily, and again in a forked child, where the parent's thread is gone.
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="artifact-writer", daemon=True
                )
                self._thread.start()
            older = self._queued.get(key) if key is not None else None
            if older is not None:
                # Same slot, newer content: the file is rewritten once, and a later job that
                # reads it (the report) still runs after it, as submission order promises.
                older.fn = fn
                return
            job = _Job(fn, path, key)
            if key is not None:
                self._queued[key] = job
            self._pending.append(job)
            self._unfinished += 1
            self._cond.notify_all()

    def flush(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                return
            self._flushing += 1  # deferred jobs run now
            self._cond.notify_all()
            try:
                self._cond.wait_for(lambda: self._unfinished == 0)
            finally:
                self._flushing -= 1

    def settle(self) -> None:
        """Wait until the writer has nothing it may run now: jobs the redraw budget holds
        back stay queued (``flush`` runs those too)."""
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                return
            self._cond.wait_for(lambda: not self._busy and not self._runnable())

    def _runnable(self) -> bool:
        owed = 0.0 if self._flushing else self._owed()
        return any(
            job.key is None or owed == 0.0 or job.key not in self._drawn for job in self._pending
        )

    def _owed(self) -> float:
        """CPU seconds of replaceable work still over budget, now."""
        paid = (time.monotonic() - self._debt_at) * REFRESH_BUDGET
        return max(0.0, self._debt - paid)

    def _next(self) -> tuple[_Job | None, float | None]:
        """The first runnable job, else how long until a deferred one may run (None: idle)."""
        owed = 0.0 if self._flushing else self._owed()
        for job in self._pending:
            if job.key is None or owed == 0.0 or job.key not in self._drawn:
                self._pending.remove(job)
                if job.key is not None:
                    # Started: a job submitted from now on for this path queues anew.
                    del self._queued[job.key]
                return job, None
        # Capped: a wait longer than the OS allows would kill the thread; it rechecks anyway.
        return None, (min(owed / REFRESH_BUDGET, 60.0) if self._pending else None)

    def _run(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                job, wait = self._next()
                while job is None:
                    self._cond.wait(wait)
                    job, wait = self._next()
                fn, path = job.fn, job.path
                self._busy = True
            cpu = time.thread_time()
            try:
                with guarded(path):
                    fn()
            except BaseException:  # a job must never kill the writer
                log.warning("artefact job for %s failed", path, exc_info=True)
            finally:
                with self._cond:
                    cpu = time.thread_time() - cpu
                    self.cpu_s += cpu
                    if job.key is not None:  # first drawings too: not held back, but paid for
                        self._debt = self._owed() + cpu
                        self._debt_at = time.monotonic()
                        self._drawn.add(job.key)
                    self._unfinished -= 1
                    self._busy = False
                    self._cond.notify_all()


# The writer's niceness on Linux, where each thread is scheduled on its own: the plots wait
# while the training threads have work, instead of taking a share of their cores.
WRITER_NICE = 19


def _lower_priority() -> None:
    """Renice the calling thread to ``WRITER_NICE`` (Linux only; elsewhere it keeps its own)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # a sandbox may refuse; plots then just compete
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)


_WRITER = _Writer()


def submit(fn: Callable[[], None], path: str | os.PathLike[str], replace: bool = False) -> None:
    """Run ``fn`` (draw and write the artefact at ``path``) on the artefact writer thread.

    Epoch-end plotting costs the training loop nothing this way. Jobs run one at a time in
    submission order, so a job that reads another's file (the report, TensorBoard) runs after
    it when submitted later. A failing job logs a warning naming ``path``, as ``guarded``.
    ``fn`` must not touch the engine: pass it copies of what it needs. Callers guard ranks.

    Args:
        fn: draws and writes the artefact.
        path: the file ``fn`` writes, named in warnings.
        replace: ``fn`` rewrites the whole file from its own data (a plot redrawn every
            epoch): if a job for the same path is still queued, not started, ``fn`` takes its
            place in the queue instead of queueing behind it, so a writer that fell behind
            draws the file once with the newest data. Redraws also share a CPU budget
            (``REFRESH_BUDGET`` of one core): over it, they wait, and later jobs pass them,
            until it recovers or ``flush`` is called; on short epochs the file is then
            rewritten every few epochs, and always at the end. A path's first drawing
            is not held back (its CPU counts against the budget). Leave False for jobs
            that each add something (per-epoch files with distinct paths never meet
            anyway; TensorBoard events share a folder).

    Example:
        >>> counts = matrix.numpy().copy()
        >>> submit(lambda: save_png(plot(counts), path), path)
    """
    _WRITER.submit(fn, path, replace)


def flush() -> None:
    """Run every submitted job, deferred ones too, and wait for them (call at fit end, so
    the files exist)."""
    _WRITER.flush()


def settle() -> None:
    """Wait for every job the writer may run now; redraws the budget holds back stay queued
    (benchmarks use it: those are drawn at ``flush``, at fit end, in no epoch's time)."""
    _WRITER.settle()


def writer_cpu_seconds() -> float:
    """CPU time the writer thread has spent on jobs since the process started."""
    return _WRITER.cpu_s


# Pillow's PNG settings, for matplotlib figures and the images ``png_bytes`` hands on: zlib
# level 1 with run-length matching compresses plots' flat colours about as well as level 6, in
# a quarter of the time.
PNG_OPTIONS: dict[str, Any] = {"compress_level": 1, "compress_type": 3}  # 3 = Z_RLE


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Render ``fig`` to PNG in memory, then write it atomically (no half-written image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs=PNG_OPTIONS)
    atomic_write_bytes(path, buf.getvalue())


def save_image(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Encode a PIL image as PNG in memory, then write it atomically."""
    atomic_write_bytes(path, png_bytes(image))


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as a PNG file. 8-bit RGB and greyscale images (the grids and matrices drawn
    every epoch) are filtered with "Up" on every row, then deflated at zlib level 1.

    Pillow's encoder tries four filters on every row and keeps the best; on these images the
    search cost more than the compression. A 16-image grid: 5 ms and 194 KB, against 9 ms
    and 213 KB through Pillow (level 1, run-length); a 6-class confusion matrix: 2.5 ms and
    49 KB, against 6 ms and 57 KB. Other modes go through Pillow.
    """
    if image.mode not in ("RGB", "L"):
        buf = io.BytesIO()
        image.save(buf, format="PNG", **PNG_OPTIONS)
        return buf.getvalue()
    rows = np.asarray(image).reshape(image.height, -1)
    raw = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    raw[:, 0] = 2  # the filter byte: "Up", each byte minus the one above it (mod 256)
    raw[:1, 1:] = rows[:1]  # above the first row is zero
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
    deflate = zlib.compressobj(1)
    data = deflate.compress(raw.data) + deflate.flush()
    colour_type = 2 if image.mode == "RGB" else 0
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        _png_chunk(kind, body)
        for kind, body in ((b"IHDR", header), (b"IDAT", data), (b"IEND", b""))
    )


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def label(name: str, max_len: int = 24) -> str:
    """A class name safe to draw: shortened, and ``$`` escaped so mathtext never parses it."""
    if len(name) > max_len:
        name = name[: max_len - 1] + "…"
    return name.replace("$", r"\$")


def to_display(
    img: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """A CHW image tensor as an HWC array matplotlib shows correctly.

    uint8 images are shown as they are; float images are de-normalised with ``mean``/``std``
    when given (the engine's convention), else taken as already in [0, 1], then clamped.
    """
    img = img.detach().cpu()
    if img.dtype != torch.uint8:
        img = img.float()
        if mean is not None and std is not None:
            m = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
            s = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
            img = img * s + m
        img = img.clamp(0.0, 1.0)
    arr = img.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def bar_chart(classes: Sequence[str], per_class: float, names_file: str) -> tuple[Figure, Any]:
    """A figure and axes for bars per class, the x axis labelled by ``class_axis``.

    Sized by the number of classes, with margins set by hand (room below for the turned
    tick labels): a layout engine would cost more than the drawing.
    """
    from matplotlib.figure import Figure  # deferred: matplotlib costs ~0.2 s to import

    width, height = float(np.clip(2 + per_class * len(classes), 6, 30)), 4.5
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    below = class_axis(ax, classes, names_file)
    fig.subplots_adjust(
        left=0.8 / width,
        right=1 - 0.2 / width,
        top=1 - 0.45 / height,
        bottom=min(0.6, below / height),
    )
    return fig, ax


def class_axis(ax: Any, classes: Sequence[str], names_file: str) -> float:
    """Label a bar chart's x axis with class names (<= 30 classes) or indices (more).

    Returns:
        inches needed below the axes for the tick labels and the axis label.
    """
    n = len(classes)
    x = np.arange(n)
    named = n <= 30
    ticks = [label(c, 18) for c in classes] if named else [str(i) for i in range(n)]
    step = max(1, int(np.ceil(n / 100)))
    fontsize = float(np.clip(300 / n, 5, 9))
    ax.set_xticks(
        x[::step],
        ticks[::step],
        rotation=45 if named else 90,
        ha="right" if named else "center",
        fontsize=fontsize,
    )
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("class" if named else f"class index (names in {names_file})")
    # A character is ~0.6 em wide; turned 45 degrees a label drops by 0.71 of its length.
    longest = max((len(t) for t in ticks), default=1)
    return longest * 0.6 * fontsize / 72 * (0.71 if named else 1.0) + 0.55
