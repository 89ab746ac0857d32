"""Process-wide settings the command-line tools apply at start; the library never does.

``tools/train.py`` and ``tools/bench.py`` call ``steady_malloc()`` at start. ``tools/train.py``
imports its modules (torch and torchvision among them) inside ``collector_paused()``, calls
``gc.freeze()`` at the start of ``main()`` and again just before the fit, so the ~400k objects
alive then (modules, model, data) stay out of the collector's full scans, which cost ~0.1 to
0.3 s each on a 2-core machine: five of them ran during the imports, one more before the first
training step.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from collections.abc import Iterator


def steady_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Fix glibc malloc's mmap and trim thresholds for this process (and the loader workers
    it forks). Returns whether it could (glibc only; elsewhere nothing changes).

    glibc starts with a 128 KB mmap threshold that it raises only as mmapped blocks are
    freed. Training on the CPU allocates and frees activation-sized blocks every step: until
    the threshold has risen past them, each one is a fresh mmap whose pages fault in again.
    On the demo that was ~500k minor faults and ~15% of every epoch, in some processes and
    not others. With fixed thresholds the blocks stay in the heap from the first step, and
    up to ``trim_threshold`` of freed memory is kept for reuse instead of returned.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        mallopt(m_trim_threshold, trim_threshold)
    )


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside the block, as it was after it.

    For a block that makes many long-lived objects and little garbage, such as importing
    torch: each full collection would scan all of them again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
