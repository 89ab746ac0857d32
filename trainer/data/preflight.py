"""The start-up check of the image files: parallel, in bounded memory, crash-contained, cached.

``mode="header"`` (the default) opens each file with Pillow, which reads the header only: the
file is readable, a format the trainer decodes, of a sane size, within the pixel budget
(``max_pixels``) and not a decompression bomb. ``mode="full"`` also decodes every image with
``load_image``. A path that is not a regular file (a FIFO, a socket, a device) is reported
without being opened: opening a FIFO would block until something writes to it.

The files are checked in chunks by a pool of processes, with at most two chunks per process
in flight, so memory does not grow with the number of files; only the failures are kept. A
native decoder that crashes on a malformed file takes down one checking process, not the
run: the chunk it was in is checked again in a fresh process, halved until the one file that
crashes it is found, and that file is reported like any other unreadable image.

With ``phash=True`` (``--check-leakage``) each usable file's perceptual hash
(``trainer.data.phash``) is computed by the same processes, and cached with the verdict.

Results are cached by path and file version (``trainer.data.check_cache``): a second run on the
same files, a resume, and the other ranks of a DDP run read them instead of checking again.
For the samples of a tree or label file just read (``listed``), a file's usable verdict stands
by its path, with no ``stat`` of each file: on 120k files those stats were most of a warm
start's own cost. The loaders read every file anyway, and skip one that fails or exceeds the
pixel budget, named and counted, so a file rewritten since its check changes nothing that
is trained on. A failure is looked at again whenever the file has changed.
Under torch.distributed, local rank 0 checks while the other ranks wait, then they read.

Example:
    >>> result = preflight(["a.jpg", "b.png"], mode="header", processes=4, cache_key="my-data")
    >>> result.bad  # [(index, reason)] of the unusable files
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing as mp
import os
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
from trainer.data.check_cache import FULL, HASH_FAILED, HASHED, HEADER, NOT_HASHED
from trainer.data.decode import over_budget
from trainer.data.phash import phash as perceptual_hash
from trainer.data.samples import SampleArray
from trainer.data.scan import NOT_REGULAR
from trainer.distributed import barrier, get_local_rank, is_distributed
from trainer.errors import DataError

logger = logging.getLogger("trainer.data")

VERIFY_MODES: tuple[str, ...] = ("header", "full", "none")
# What Image.open may call the formats load_image decodes (MPO: JPEGs from cameras).
KNOWN_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF"})
MAX_SIDE = 65535  # JPEG's and WebP's own limit; a larger side is a corrupt header
CHUNK = 128  # files per task: large enough that inter-process traffic is noise
# The default pixel budget (``max_image_pixels``): 50 MP is a 50 MP camera's or phone's full
# resolution, 150 MB decoded; a larger header (often a few KB claiming 13377x13377, just
# under Pillow's own refusal at 179 MP) would cost seconds and gigabytes per decode, in
# every loader worker at once.
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass
class PreflightResult:
    """What ``preflight`` found.

    Attributes:
        bad: ``(index into paths, reason)`` of each unusable file, in path order.
        checked: files checked by this call.
        cached: files whose result came from the cache.
        seconds: wall time of the call.
        phashes: with ``phash=True``, ``index into paths -> perceptual hash`` of each usable
            file that decodes; None otherwise.
    """

    bad: list[tuple[int, str]] = field(default_factory=list)
    checked: int = 0
    cached: int = 0
    seconds: float = 0.0
    phashes: dict[int, int] | None = None


def header_problem(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the file at ``path`` is unusable, judged from its header alone; None if it looks fine.

    Pillow's ``Image.open`` reads the header only (the pixels are decoded on first use):
    the format, the size, and whether the header parses at all.
    """
    from PIL import Image

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
    return over_budget((w, h), max_pixels)


def decode_problem(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the file at ``path`` cannot be decoded by ``load_image``; None if it decodes.

    The header is judged first (``header_problem``): a file over the pixel budget is refused
    before any pixel is decoded.
    """
    from trainer.data.decode import load_image

    if (problem := header_problem(path, max_pixels)) is not None:
        return problem
    try:
        load_image(path)
    except Exception as e:
        return f"{type(e).__name__}: {e}".strip()
    return None


def check_chunk(
    paths: Sequence[str], full: bool, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[tuple[int, str]]:
    """``(position, reason)`` of the unusable files among ``paths``."""
    check = decode_problem if full else header_problem
    return [(i, r) for i, p in enumerate(paths) if (r := check(p, max_pixels)) is not None]


# What a chunk's check returns: ``(position, reason)`` of the unusable files, and with
# ``Check.phash`` each file's perceptual hash (None: unusable, or it does not decode).
ChunkResult = tuple[list[tuple[int, str]], list[int | None]]


@dataclass(frozen=True)
class Check:
    """``check_chunk`` with its settings bound: what a checking process is sent."""

    full: bool
    max_pixels: int = DEFAULT_MAX_PIXELS
    phash: bool = False

    def __call__(self, paths: Sequence[str]) -> ChunkResult:
        bad = check_chunk(paths, self.full, self.max_pixels)
        if not self.phash:
            return bad, []
        unusable = {i for i, _ in bad}
        return bad, [None if i in unusable else _phash_or_none(p) for i, p in enumerate(paths)]


def _phash_or_none(path: str) -> int | None:
    try:
        return perceptual_hash(path)
    except Exception:  # a header check passes some files that do not decode: no hash, no crash
        return None


def preflight(
    paths: Sequence[str | os.PathLike[str]],
    *,
    mode: str = "header",
    processes: int = 0,
    cache_key: str | None = None,
    cache_dir: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    phash: bool = False,
    encoded: bytes | None = None,
    listed: bool = False,
) -> PreflightResult:
    """Check ``paths`` (see the module docstring); returns the unusable ones with why.

    Args:
        paths: the image files, e.g. every sample of every split.
        mode: "header", "full" or "none" (nothing is checked).
        processes: checking processes; 0 checks headers in this process. A full check always
            runs in at least one child process, where a native crash cannot end the run.
        cache_key: names the cache file (e.g. the data root); None: no cache.
        cache_dir: where the cache lives; default ``check_cache.default_cache_dir()``.
        max_pixels: the pixel budget: an image whose header declares more is unusable.
        phash: also compute (or read from the cache) each usable file's perceptual hash.
        encoded: ``check_cache.encode_paths(paths)`` where the caller holds it already.
        listed: the caller has just seen each of ``paths`` listed as a regular file (a tree
            scan, which re-reads every folder's listing on each run, or a label file's
            ``stat``): a cached result that the file is usable then stands for its path,
            with no ``stat`` of the file. One that it is not, or none, is looked at as
            without ``listed``: each such file's version now is compared with the one it was
            checked at. Ignored with ``phash`` (a hash is of one version of a file).
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"mode must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    if mode == "none" or not paths:
        return PreflightResult(phashes={} if phash else None)
    strs = [os.fspath(p) for p in paths]
    check = Check(mode == "full", max_pixels, phash)
    if cache_key is not None:  # a verdict holds for one budget
        cache_key = f"{cache_key}\0max_pixels={max_pixels}"
    if cache_key is not None and encoded is None:
        encoded = check_cache.encode_paths(strs)
    args = (strs, check, processes, cache_key, cache_dir, encoded or b"", listed and not phash)
    if not is_distributed():
        return _preflight(*args)
    # Local rank 0 checks; the others wait, then read its results from the cache (or check
    # themselves, should it not have been writable).
    first = get_local_rank() == 0
    result = _preflight(*args) if first else None
    barrier()
    return result or _preflight(*args)


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
    max_pixels: int = DEFAULT_MAX_PIXELS,
    phash: bool = False,
    listed: bool = False,
) -> tuple[dict[str, SampleArray], list[tuple[Path, str]], dict[str, int] | None]:
    """``preflight`` over every split's samples: the splits without the unusable files,
    ``(path, reason)`` of those, and with ``phash`` the perceptual hash of each file that has
    one (``path -> hash``; None without ``phash``).

    ``known_bad`` are images already left out of ``splits`` (a label file's missing ones): they
    count with the unusable ones against ``max_bad_fraction``. ``listed``: as ``preflight``'s.

    Raises:
        DataError: more than ``max_bad_fraction`` of the images are unusable.
    """
    paths = [p for samples in splits.values() for p in samples.paths()]
    # The splits hold their paths encoded already: the cache's key needs no second encoding.
    encoded = b"\0".join(s.encoded_paths() for s in splits.values() if len(s))
    result = preflight(
        paths,
        mode=mode,
        processes=processes,
        cache_key=cache_key,
        cache_dir=cache_dir,
        max_pixels=max_pixels,
        phash=phash,
        encoded=encoded,
        listed=listed,
    )
    found = result.bad
    hashes = None if result.phashes is None else {paths[i]: h for i, h in result.phashes.items()}
    bad_files = [(Path(paths[i]), r) for i, r in found]
    if not bad_files:
        return dict(splits), [], hashes
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
    return kept, bad_files, hashes


def available_cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _preflight(
    paths: list[str],
    check: Check,
    processes: int,
    cache_key: str | None,
    cache_dir: Path | None,
    blob: bytes,
    listed: bool,
) -> PreflightResult:
    t0 = time.perf_counter()
    level = FULL if check.full else HEADER
    where = None
    if cache_key is not None:
        where = check_cache.cache_file(cache_dir or check_cache.default_cache_dir(), cache_key)
        table = check_cache.load(where, paths, blob)
    else:
        table = check_cache.CheckTable.empty(check_cache.FileStats.empty(len(paths)))
    # The results in doubt: none at this level, a failure (the file may be fixed since), or
    # every one unless the caller has just seen the files listed (see ``listed``). Those
    # files' versions now are taken, and a result found at another version dropped.
    doubt = (table.level < level) | (table.reason >= 0) if listed else np.ones(len(paths), bool)
    look = np.flatnonzero(doubt)
    table.refresh(look, check_cache.stat_all([paths[i] for i in look] if listed else paths))
    stats = table.stats
    redo = table.level < level
    if check.phash:  # a usable file not hashed yet is checked again, and hashed
        redo |= (table.hashed == NOT_HASHED) & (table.reason < 0)
    todo = np.flatnonzero(redo)
    for i in todo[stats.size[todo] == check_cache.MISSING]:
        table.set_reason(int(i), "cannot be read: the file vanished or is not accessible")
    for i in todo[stats.size[todo] == check_cache.NOT_REGULAR]:
        table.set_reason(int(i), NOT_REGULAR)
    todo = todo[stats.size[todo] >= 0]
    table.reason[todo] = -1
    for idx, (bad, hashes) in _run_checks(paths, todo, check, processes):
        for j, reason in bad:
            table.set_reason(int(idx[j]), reason)
        for i, h in zip(idx, hashes, strict=False):  # no hashes without check.phash
            table.hashed[i] = HASH_FAILED if h is None else HASHED
            table.phash[i] = 0 if h is None else h
    table.level[np.flatnonzero(table.level < level)] = level
    if where is not None and len(todo):
        check_cache.save(where, blob, table)
    bad = [(int(i), table.reasons[table.reason[i]]) for i in np.flatnonzero(table.reason >= 0)]
    phashes = None
    if check.phash:
        ok = np.flatnonzero((table.hashed == HASHED) & (table.reason < 0))
        phashes = dict(zip(ok.tolist(), table.phash[ok].tolist(), strict=True))
    result = PreflightResult(
        bad, len(todo), len(paths) - len(todo), time.perf_counter() - t0, phashes
    )
    logger.info(
        "checked %d image %s in %.1f s (%d from the cache), %d unusable",
        result.checked,
        "files" if check.full else "headers",
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
    paths: list[str], todo: np.ndarray, check: Check, processes: int
) -> Iterator[tuple[np.ndarray, ChunkResult]]:
    """The chunks of ``todo`` (indices into ``paths``), each with its ``ChunkResult``."""
    with progress_bar(len(todo), "checking images") as bar:
        if processes <= 0 and not check.full:
            for start in range(0, len(todo), CHUNK):
                idx = todo[start : start + CHUNK]
                yield idx, check([paths[i] for i in idx])
                bar.update(len(idx))
            return
        yield from _pooled(paths, todo, check, max(1, processes), bar)


# The pool. Ours, on the standard library's ProcessPoolExecutor, rather than pebble (a new
# dependency) or the executor alone: when a checker dies, the executor marks the whole pool
# broken and fails every task in flight, not only the one that crashed; pebble fails only
# that task, but a task is a chunk of files, so either way the chunk must still be searched
# for the file that crashed it (one task per file instead would cost a round trip per file,
# most of a header check). So: on BrokenProcessPool, the pool is replaced, the chunks that
# were in flight are checked again, each in one fresh process, and a chunk that crashes
# again is halved until the file is alone (``_isolate``): log2(CHUNK) extra processes per
# malformed file, none for a tree without one.


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
    paths: list[str], todo: np.ndarray, check: Check, processes: int, bar: Any
) -> Iterator[tuple[np.ndarray, ChunkResult]]:
    """The chunks of ``todo`` checked by a process pool, two chunks per process in flight."""
    starts = iter(range(0, len(todo), CHUNK))
    pending: dict[Future[ChunkResult], np.ndarray] = {}
    crashed: list[np.ndarray] = []
    pool = _new_pool(processes)
    try:
        while True:
            while not crashed and len(pending) < 2 * processes:
                start = next(starts, None)
                if start is None:
                    break
                idx = todo[start : start + CHUNK]
                pending[pool.submit(check, [paths[i] for i in idx])] = idx
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
                    yield idx, found
                    bar.update(len(idx))
            if crashed and not pending:
                pool.shutdown(wait=True)
                for idx in crashed:
                    yield from _isolate(paths, idx, check)
                    bar.update(len(idx))
                crashed = []
                pool = _new_pool(processes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _isolate(
    paths: list[str], idx: np.ndarray, check: Check
) -> Iterator[tuple[np.ndarray, ChunkResult]]:
    """Check ``paths[idx]`` in one fresh process; on a crash, halve until the culprit is alone."""
    found, exitcode = _in_child([paths[i] for i in idx], check)
    if found is not None:
        yield idx, found
    elif len(idx) == 1:
        how = f"signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}"
        logger.warning("%s crashed the image decoder (%s); skipping it", paths[idx[0]], how)
        reason = f"crashed the image decoder ({how}): the file is malformed"
        yield idx, ([(0, reason)], [None] if check.phash else [])
    else:
        half = len(idx) // 2
        yield from _isolate(paths, idx[:half], check)
        yield from _isolate(paths, idx[half:], check)


def _child(conn: Connection, paths: list[str], check: Check) -> None:
    _quiet()
    conn.send(check(paths))
    conn.close()


def _in_child(paths: list[str], check: Check) -> tuple[ChunkResult | None, int]:
    """``check(paths)`` in a child process: its result, or None and the exit code."""
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, paths, check), daemon=True)
    proc.start()
    send.close()
    try:
        found: ChunkResult | None = receive.recv()
    except EOFError:
        found = None
    finally:
        receive.close()
    proc.join()
    return found, proc.exitcode or 0
