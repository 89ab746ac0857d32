"""The tree scan's result on disk: a second run, a resume or another DDP rank skips the walk.

Stored beside the image checks' results (``check_cache.default_cache_dir()``), one file per
tree root (and, for a tree split by seed, per ``val_fraction`` and ``seed``): each split's
samples as ``SampleArray`` arrays, the classes, the ignored files, the links not followed and
the scan's log lines; and every folder whose listing the scan read, with its mtime and inode.

Adding, removing or renaming an entry changes the mtime of the folder that holds it, so an
added or removed image or class folder makes a stored scan stale: it is used only while every
one of its folders still has the stored mtime and inode, otherwise the tree is walked again.
A scan is not stored when one of its folders changed within ``RACY_SECONDS`` before the scan
started: an entry added in the same tick of the file system's clock could leave that mtime as
it was (the "racy" case git also guards against). A file rewritten in place changes no folder,
but its own size and mtime, which the image check compares file by file (``check_cache``).

Loading one takes no Python object per image: 1.28 M samples are a few numpy arrays.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data import check_cache
from trainer.data.samples import SampleArray
from trainer.data.scan import Sample, TreeScan, scan_tree
from trainer.distributed import get_local_rank
from trainer.io import atomic_write_bytes

logger = logging.getLogger("trainer.data")

RACY_SECONDS = 2.0  # coarser than any file system's mtime tick (FAT's is 2 s)
_FORMAT = 1  # bump when the layout changes: an old file is then ignored
_SPLITS = ("train", "val", "test")


def scan_file(cache_dir: Path, root: Path, val_fraction: float, seed: int) -> Path:
    """Where the scan of ``root`` is stored: ``<cache_dir>/<hash>.scan.npz``."""
    key = json.dumps(["scan", str(root.resolve()), val_fraction, seed])
    return check_cache.cache_file(cache_dir, key).with_suffix(".scan.npz")


def cached_scan(
    root: Path, *, val_fraction: float, seed: int, cache_dir: Path | None = None
) -> TreeScan:
    """``scan_tree(root, ...)``, read from the cache while the tree's folders are unchanged;
    the samples of every split as ``SampleArray``.

    Raises:
        DataError: as ``scan_tree``.
    """
    where = scan_file(cache_dir or check_cache.default_cache_dir(), root, val_fraction, seed)
    scan = load(where)
    if scan is not None:
        return scan
    started = time.time_ns()
    with _recorded(logger) as lines:
        scan = scan_tree(root, val_fraction=val_fraction, seed=seed)
    for split in _SPLITS:
        setattr(scan, split, as_sample_array(getattr(scan, split)))
    if get_local_rank() == 0:  # one writer per machine, as for the check results
        save(where, scan, lines, started)
    return scan


def as_sample_array(samples: Sequence[Sample]) -> SampleArray:
    return samples if isinstance(samples, SampleArray) else SampleArray(samples)


def _stats(folders: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """mtimes (ns) and inodes of ``folders``; None if one of them is gone."""
    mtime, ino = np.zeros(len(folders), np.int64), np.zeros(len(folders), np.int64)
    for i, folder in enumerate(folders):
        try:
            st = os.stat(folder)
        except OSError:
            return None
        mtime[i], ino[i] = st.st_mtime_ns, st.st_ino
    return mtime, ino


def save(path: Path, scan: TreeScan, lines: list[tuple[int, str]], started_ns: int) -> bool:
    """Store ``scan`` (its splits ``SampleArray``) at ``path``; False when it is too fresh to
    trust (see the module docstring) or the folder is not writable."""
    stats = _stats(scan.folders)
    if stats is None or (stats[0] > started_ns - int(RACY_SECONDS * 1e9)).any():
        return False
    arrays: dict[str, Any] = {}
    for split in _SPLITS:
        samples = getattr(scan, split)
        assert isinstance(samples, SampleArray)
        for name, array in zip(("blob", "offsets", "targets"), samples.arrays(), strict=True):
            arrays[f"{split}_{name}"] = array
    extra = {
        "classes": scan.classes,
        "ignored_files": [str(p) for p in scan.ignored_files],
        "skipped_links": [[str(p), why] for p, why in scan.skipped_links],
        "log": lines,
    }
    buf = io.BytesIO()
    arrays["format"] = np.array(_FORMAT)
    arrays["folders"] = np.frombuffer(check_cache.encode_paths(scan.folders), np.uint8)
    arrays["mtime"], arrays["ino"] = stats
    arrays["extra"] = np.frombuffer(json.dumps(extra).encode(), np.uint8)
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        logger.debug("cannot write the scan cache %s: %s", path, e)
        return False
    return True


def load(path: Path) -> TreeScan | None:
    """The scan stored at ``path`` if every folder it read is as it was; else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != _FORMAT:
                return None
            folders = os.fsdecode(z["folders"].tobytes()).split("\0")
            stats = _stats(folders)
            if stats is None:
                return None
            if not (np.array_equal(stats[0], z["mtime"]) and np.array_equal(stats[1], z["ino"])):
                return None
            extra = json.loads(z["extra"].tobytes())
            splits = {
                s: SampleArray.from_arrays(z[f"{s}_blob"], z[f"{s}_offsets"], z[f"{s}_targets"])
                for s in _SPLITS
            }
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if not isinstance(e, FileNotFoundError):
            logger.debug("ignoring the scan cache %s: %s", path, e)
        return None
    for level, message in extra["log"]:  # what the walk said, said again
        logger.log(level, "%s", message)
    return TreeScan(
        classes=list(extra["classes"]),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        ignored_files=[Path(p) for p in extra["ignored_files"]],
        skipped_links=[(Path(p), why) for p, why in extra["skipped_links"]],
        folders=folders,
    )


@contextmanager
def _recorded(log: logging.Logger) -> Iterator[list[tuple[int, str]]]:
    """The ``(level, message)`` of what ``log`` says inside the block (it is still said)."""
    lines: list[tuple[int, str]] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((record.levelno, record.getMessage()))

    handler = _Keep(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield lines
    finally:
        log.removeHandler(handler)
