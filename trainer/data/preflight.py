"""The start-up check of the image files: parallel, in bounded memory, crash-contained, cached.

``mode="header"`` (the default) opens each file with Pillow, which reads the header only: the
file is readable, a format the trainer decodes, of a sane size, and not a decompression bomb.
``mode="full"`` decodes every image with ``load_image``, the decoders training uses.

The files are checked in chunks by a pool of processes, with at most two chunks per process
in flight, so memory does not grow with the number of files; only the failures are kept. A
native decoder that crashes on a malformed file takes down one checking process, not the
run: the chunk it was in is checked again in a fresh process, halved until the one file that
crashes it is found, and that file is reported like any other unreadable image.

Results are cached by (path, size, mtime) (``trainer.data.check_cache``): a second run on the
same files, a resume, and the other ranks of a DDP run read them instead of checking again.
Under torch.distributed, local rank 0 checks while the other ranks wait, then they read.

Example:
    >>> result = preflight(["a.jpg", "b.png"], mode="header", processes=4, cache_key="my-data")
    >>> result.bad  # [(index, reason)] of the unusable files
"""

from __future__ import annotations

import faulthandler
import logging
import math
import multiprocessing as mp
import os
import struct
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data import check_cache
from trainer.data.check_cache import FULL, HEADER
from trainer.data.samples import SampleArray
from trainer.distributed import barrier, get_local_rank, is_distributed
from trainer.errors import DataError

logger = logging.getLogger("trainer.data")

VERIFY_MODES: tuple[str, ...] = ("header", "full", "none")
# What Image.open may call the formats load_image decodes (MPO: JPEGs from cameras).
KNOWN_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
MAX_SIDE = 65535  # JPEG's and WebP's own limit; a larger side is a corrupt header
CHUNK = 128  # files per task: large enough that inter-process traffic is noise


@dataclass
class PreflightResult:
    """What ``preflight`` found.

    Attributes:
        bad: ``(index into paths, reason)`` of each unusable file, in path order.
        checked: files checked by this call.
        cached: files whose result came from the cache.
        seconds: wall time of the call.
    """

    bad: list[tuple[int, str]] = field(default_factory=list)
    checked: int = 0
    cached: int = 0
    seconds: float = 0.0


def header_problem(path: str) -> str | None:
    """Why the file at ``path`` is unusable, judged from its header alone; None if it looks fine.

    A JPEG whose marker segments walk cleanly to the start of scan, with an 8-bit frame of a
    plausible size under Pillow's pixel limit, passes without Pillow (~11 us instead of ~47
    per file on the 2-core VM: most of a first run's check on a large tree); anything else,
    and every other format, is opened by Pillow, whose verdict and reason stand.
    """
    from PIL import Image

    try:
        with open(path, "rb") as f:
            size = _jpeg_size(f.read(_JPEG_HEAD))
    except OSError as e:
        return f"{type(e).__name__}: {e}".strip()
    limit = Image.MAX_IMAGE_PIXELS or math.inf
    if size is not None and 1 <= size[0] * size[1] <= limit and max(size) <= MAX_SIDE:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError as e:
        return f"too large to decode safely ({e}); downscale it, or remove it from the tree"
    except Exception as e:  # Pillow reports a malformed header as many exception types
        return f"{type(e).__name__}: {e}".strip()
    if fmt not in KNOWN_FORMATS:
        return f"its content is {fmt}, not one of {', '.join(sorted(KNOWN_FORMATS))}"
    if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
        return f"its header claims an implausible size of {w}x{h} pixels"
    return None


# Bytes read for the JPEG walk: the headers of most JPEGs; one with a larger EXIF block (a
# camera's thumbnail) runs out of bytes and goes to Pillow.
_JPEG_HEAD = 1 << 14
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic-coded), not
# DHT (C4), JPG (C8) or DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's frame header, walking its marker segments up to the
    start of scan; None where the walk does not end cleanly there (Pillow then judges)."""
    if head[:2] != b"\xff\xd8":
        return None
    i, n, size = 2, len(head), None
    while i + 4 <= n:
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
            continue
        if marker < 0xC0 or 0xD0 <= marker <= 0xD9:  # no length field, or not a marker
            return None
        (length,) = struct.unpack_from(">H", head, i + 2)
        if length < 2:
            return None
        if marker in _SOF:
            if i + 10 > n or size is not None:
                return None
            bits, height, width, components = struct.unpack_from(">BHHB", head, i + 4)
            if bits != 8 or components not in (1, 3, 4):
                return None
            size = (width, height)
        elif marker == 0xDA:  # start of scan: the header is over
            return size
        i += 2 + length
    return None


def decode_problem(path: str) -> str | None:
    """Why the file at ``path`` cannot be decoded by ``load_image``; None if it decodes."""
    from trainer.data.decode import load_image

    try:
        load_image(path)
    except Exception as e:
        return f"{type(e).__name__}: {e}".strip()
    return None


def check_chunk(paths: Sequence[str], full: bool) -> list[tuple[int, str]]:
    """``(position, reason)`` of the unusable files among ``paths``."""
    check = decode_problem if full else header_problem
    return [(i, r) for i, p in enumerate(paths) if (r := check(p)) is not None]


def preflight(
    paths: Sequence[str | os.PathLike[str]],
    *,
    mode: str = "header",
    processes: int = 0,
    cache_key: str | None = None,
    cache_dir: Path | None = None,
) -> PreflightResult:
    """Check ``paths`` (see the module docstring); returns the unusable ones with why.

    Args:
        paths: the image files, e.g. every sample of every split.
        mode: "header", "full" or "none" (nothing is checked).
        processes: checking processes; 0 checks headers in this process. A full check always
            runs in at least one child process, where a native crash cannot end the run.
        cache_key: names the cache file (e.g. the data root); None: no cache.
        cache_dir: where the cache lives; default ``check_cache.default_cache_dir()``.
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"mode must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    if mode == "none" or not paths:
        return PreflightResult()
    strs = [os.fspath(p) for p in paths]
    if not is_distributed():
        return _preflight(strs, mode, processes, cache_key, cache_dir)
    # Local rank 0 checks; the others wait, then read its results from the cache (or check
    # themselves, should it not have been writable).
    first = get_local_rank() == 0
    result = _preflight(strs, mode, processes, cache_key, cache_dir) if first else None
    barrier()
    return result or _preflight(strs, mode, processes, cache_key, cache_dir)


def check_splits(
    splits: Mapping[str, SampleArray],
    *,
    mode: str,
    processes: int,
    cache_key: str | None,
    cache_dir: Path | None,
    max_bad_fraction: float,
    root: Path,
    known_bad: Sequence[tuple[Path, str]] = (),
) -> tuple[dict[str, SampleArray], list[tuple[Path, str]]]:
    """``preflight`` over every split's samples: the splits without the unusable files, and
    ``(path, reason)`` of those.

    ``known_bad`` are images already left out of ``splits`` (a label file's missing ones): they
    count with the unusable ones against ``max_bad_fraction``.

    Raises:
        DataError: more than ``max_bad_fraction`` of the images are unusable.
    """
    paths = [p for samples in splits.values() for p in samples.paths()]
    found = preflight(
        paths, mode=mode, processes=processes, cache_key=cache_key, cache_dir=cache_dir
    ).bad
    bad_files = [(Path(paths[i]), r) for i, r in found]
    if not bad_files:
        return dict(splits), []
    shown = "; ".join(f"{p} ({r})" for p, r in [*known_bad, *bad_files][:5])
    n_bad, n_all = len(bad_files) + len(known_bad), len(paths) + len(known_bad)
    fraction = n_bad / n_all
    if fraction > max_bad_fraction:
        raise DataError(
            f"{n_bad} of {n_all} images under {root} ({fraction:.1%}) cannot be "
            f"used, more than max_bad_fraction={max_bad_fraction}. First ones: {shown}. Remove "
            "or replace the broken files, or raise --max-bad-fraction to skip them."
        )
    logger.warning(
        "Skipping %d unusable image(s) of %d under %s: %s%s",
        len(bad_files),
        len(paths),
        root,
        shown,
        " ..." if len(bad_files) > 5 else "",
    )
    keep = np.ones(len(paths), bool)
    keep[[i for i, _ in found]] = False
    kept, start = {}, 0
    for name, samples in splits.items():
        kept[name] = samples.select(keep[start : start + len(samples)])
        start += len(samples)
    return kept, bad_files


def available_cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _preflight(
    paths: list[str], mode: str, processes: int, cache_key: str | None, cache_dir: Path | None
) -> PreflightResult:
    t0 = time.perf_counter()
    level = FULL if mode == "full" else HEADER
    size, mtime = check_cache.stat_all(paths)
    where = None
    blob = b""
    if cache_key is not None:
        where = check_cache.cache_file(cache_dir or check_cache.default_cache_dir(), cache_key)
        blob = check_cache.encode_paths(paths)
        table = check_cache.load(where, paths, blob, size, mtime)
    else:
        table = check_cache.CheckTable.empty(len(paths))
        table.size[:], table.mtime[:] = size, mtime
    todo = np.flatnonzero(table.level < level)
    for i in todo[size[todo] < 0]:
        table.set_reason(int(i), "cannot be read: the file vanished or is not accessible")
    todo = todo[size[todo] >= 0]
    table.reason[todo] = -1
    for i, reason in _run_checks(paths, todo, mode == "full", processes):
        table.set_reason(i, reason)
    table.level[np.flatnonzero(table.level < level)] = level
    if where is not None and len(todo):
        check_cache.save(where, blob, table)
    bad = [(int(i), table.reasons[table.reason[i]]) for i in np.flatnonzero(table.reason >= 0)]
    result = PreflightResult(bad, len(todo), len(paths) - len(todo), time.perf_counter() - t0)
    logger.info(
        "checked %d image %s in %.1f s (%d from the cache), %d unusable",
        result.checked,
        "files" if mode == "full" else "headers",
        result.seconds,
        result.cached,
        len(bad),
    )
    return result


def progress_bar(total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` images on a terminal (off elsewhere, and for none)."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        disable=not sys.stderr.isatty() or total == 0,
        leave=False,
    )


def _run_checks(
    paths: list[str], todo: np.ndarray, full: bool, processes: int
) -> Iterator[tuple[int, str]]:
    """``(index, reason)`` of each unusable file among ``paths[todo]``."""
    with progress_bar(len(todo), "checking images") as bar:
        if processes <= 0 and not full:
            for start in range(0, len(todo), CHUNK):
                idx = todo[start : start + CHUNK]
                for j, reason in check_chunk([paths[i] for i in idx], full):
                    yield int(idx[j]), reason
                bar.update(len(idx))
            return
        yield from _pooled(paths, todo, full, max(1, processes), bar)


def _quiet() -> None:
    # A checker that crashes is expected and reported by file name; Python's fault handler
    # (pytest enables it) would add a stack dump per crash to the terminal.
    faulthandler.disable()


def _new_pool(processes: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(processes, mp_context=_context(), initializer=_quiet)


def _context() -> Any:
    # fork starts a checker in milliseconds and shares the path list; spawn where there is none.
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _pooled(
    paths: list[str], todo: np.ndarray, full: bool, processes: int, bar: Any
) -> Iterator[tuple[int, str]]:
    """The chunks of ``todo`` checked by a process pool, two chunks per process in flight."""
    starts = iter(range(0, len(todo), CHUNK))
    pending: dict[Future[list[tuple[int, str]]], np.ndarray] = {}
    crashed: list[np.ndarray] = []
    pool = _new_pool(processes)
    try:
        while True:
            while not crashed and len(pending) < 2 * processes:
                start = next(starts, None)
                if start is None:
                    break
                idx = todo[start : start + CHUNK]
                pending[pool.submit(check_chunk, [paths[i] for i in idx], full)] = idx
            if not pending and not crashed:
                return
            if pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    idx = pending.pop(f)
                    try:
                        found = f.result()
                    except BrokenProcessPool:
                        crashed.append(idx)  # this chunk, or one beside it, crashed a checker
                        continue
                    for j, reason in found:
                        yield int(idx[j]), reason
                    bar.update(len(idx))
            if crashed and not pending:
                pool.shutdown(wait=True)
                for idx in crashed:
                    yield from _isolate(paths, idx, full)
                    bar.update(len(idx))
                crashed = []
                pool = _new_pool(processes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate(paths: list[str], idx: np.ndarray, full: bool) -> Iterator[tuple[int, str]]:
    """Check ``paths[idx]`` in one fresh process; on a crash, halve until the culprit is alone."""
    found, exitcode = _in_child([paths[i] for i in idx], full)
    if found is not None:
        for j, reason in found:
            yield int(idx[j]), reason
    elif len(idx) == 1:
        how = f"signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}"
        logger.warning("%s crashed the image decoder (%s); skipping it", paths[idx[0]], how)
        yield int(idx[0]), f"crashed the image decoder ({how}): the file is malformed"
    else:
        half = len(idx) // 2
        yield from _isolate(paths, idx[:half], full)
        yield from _isolate(paths, idx[half:], full)


def _child(conn: Connection, paths: list[str], full: bool) -> None:
    _quiet()
    conn.send(check_chunk(paths, full))
    conn.close()


def _in_child(paths: list[str], full: bool) -> tuple[list[tuple[int, str]] | None, int]:
    """``check_chunk(paths)`` in a child process: its result, or None and the exit code."""
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, paths, full), daemon=True)
    proc.start()
    send.close()
    try:
        found: list[tuple[int, str]] | None = receive.recv()
    except EOFError:
        found = None
    finally:
        receive.close()
    proc.join()
    return found, proc.exitcode or 0
