"""The tree scan's result on disk: a second run, a resume or another DDP rank skips the walk.

Stored beside the image checks' results (``check_cache.default_cache_dir()``), in the start-up
caches' one format (``trainer.data.cache_store``), one file per tree root (and, for a tree split
by seed, per ``val_fraction`` and ``seed``): each split's samples as ``SampleArray`` arrays,
the classes, the ignored files, the links not followed, the non-regular files, the scan's log
lines, and every folder whose listing the scan read with a digest of that listing.

A stored scan is used only while every one of its folders still lists the same entries (names,
kinds and link targets, ``scan.read_folder``), re-read on every load; otherwise the tree is
walked again. Folder mtimes are not trusted: an update extracted from an archive with
normalised mtimes (``tar --mtime=...``) over the old copy leaves them as they were, and a
change within the file system's clock tick leaves them too. Re-reading the listings costs
one ``scandir`` per folder, far less than the walk (which also builds every path, splits and
sorts). A file rewritten in place changes no listing: the loaders, which read every file,
skip it should it fail (``trainer.data.preflight`` says why no stat of each file is made).

Loading one takes no Python object per image: 1.28 M samples are a few numpy arrays.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data import cache_store, check_cache
from trainer.data.samples import SampleArray
from trainer.data.scan import Sample, TreeScan, listing_digest, read_folder, scan_tree
from trainer.distributed import get_local_rank

logger = logging.getLogger("trainer.data")

_KIND, _VERSION = "scan", 2  # bump the version when the layout changes
_SPLITS = ("train", "val", "test")
_ARRAYS = ("blob", "offsets", "targets")
_DTYPES = {f"{s}_{a}": ("uint8" if a == "blob" else "int64") for s in _SPLITS for a in _ARRAYS}


def scan_file(cache_dir: Path, root: Path, val_fraction: float, seed: int) -> Path:
    """Where the scan of ``root`` is stored: ``<cache_dir>/<hash>.scan.npz``."""
    key = json.dumps(["scan", str(root.resolve()), val_fraction, seed])
    return check_cache.cache_file(cache_dir, key).with_suffix(".scan.npz")


def cached_scan(
    root: Path, *, val_fraction: float, seed: int, cache_dir: Path | None = None
) -> TreeScan:
    """``scan_tree(root, ...)``, read from the cache while the tree's folders list the same;
    the samples of every split as ``SampleArray``.

    Raises:
        DataError: as ``scan_tree``.
    """
    where = scan_file(cache_dir or check_cache.default_cache_dir(), root, val_fraction, seed)
    scan = load(where)
    if scan is not None:
        return scan
    with _recorded(logger) as lines:
        scan = scan_tree(root, val_fraction=val_fraction, seed=seed)
    for split in _SPLITS:
        setattr(scan, split, as_sample_array(getattr(scan, split)))
    if get_local_rank() == 0:  # one writer per machine, as for the check results
        save(where, scan, lines)
    return scan


def as_sample_array(samples: Sequence[Sample]) -> SampleArray:
    return samples if isinstance(samples, SampleArray) else SampleArray(samples)


def unchanged(folders: Sequence[str], listings: Sequence[str]) -> bool:
    """Whether every one of ``folders`` still lists what its digest in ``listings`` says."""
    for folder, digest in zip(folders, listings, strict=True):
        try:
            if listing_digest(read_folder(folder)) != digest:
                return False
        except OSError:
            return False
    return True


def save(path: Path, scan: TreeScan, lines: list[tuple[int, str]]) -> bool:
    """Store ``scan`` (its splits ``SampleArray``) at ``path``; False when the folder is not
    writable."""
    arrays: dict[str, np.ndarray] = {}
    for split in _SPLITS:
        samples = getattr(scan, split)
        assert isinstance(samples, SampleArray)
        for name, array in zip(_ARRAYS, samples.arrays(), strict=True):
            arrays[f"{split}_{name}"] = array
    meta = {
        "classes": scan.classes,
        "ignored_files": [str(p) for p in scan.ignored_files],
        "skipped_links": [[str(p), why] for p, why in scan.skipped_links],
        "not_regular": [str(p) for p in scan.not_regular],
        "folders": scan.folders,
        "listings": scan.listings,
        "log": lines,
    }
    return cache_store.write(path, _KIND, _VERSION, arrays, meta)


def load(path: Path) -> TreeScan | None:
    """The scan stored at ``path`` if every folder it read lists the same; else None (also
    for a file that is damaged, crafted or inconsistent)."""
    stored = cache_store.read(path, _KIND, _VERSION, _DTYPES)
    if stored is None:
        return None
    z, meta = stored
    try:
        scan = _from_stored(z, meta)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        logger.debug("ignoring the scan cache %s: %s", path, e)
        return None
    if not unchanged(scan.folders, scan.listings):
        return None
    for level, message in meta["log"]:  # what the walk said, said again
        logger.log(level, "%s", message)
    return scan


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("not a list of strings")
    return value


def _from_stored(z: dict[str, np.ndarray], meta: Any) -> TreeScan:
    """The ``TreeScan`` held by a stored file's arrays and metadata; raises on anything
    inconsistent (TypeError, ValueError, KeyError or IndexError)."""
    classes = _strings(meta["classes"])
    folders, listings = _strings(meta["folders"]), _strings(meta["listings"])
    if len(folders) != len(listings) or not folders:
        raise ValueError("folders and listings do not match")
    links = meta["skipped_links"]
    if not isinstance(links, list) or not all(len(_strings(x)) == 2 for x in links):
        raise TypeError("skipped_links")
    log = meta["log"]
    if not isinstance(log, list) or not all(
        isinstance(x, list) and len(x) == 2 and isinstance(x[0], int) and isinstance(x[1], str)
        for x in log
    ):
        raise TypeError("log")
    splits = {}
    for s in _SPLITS:
        blob, offsets, targets = (z[f"{s}_{a}"] for a in _ARRAYS)
        splits[s] = SampleArray.from_arrays(blob, offsets, targets, classes=len(classes))
    return TreeScan(
        classes=list(classes),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        ignored_files=[Path(p) for p in _strings(meta["ignored_files"])],
        skipped_links=[(Path(p), why) for p, why in links],
        not_regular=[Path(p) for p in _strings(meta["not_regular"])],
        folders=folders,
        listings=listings,
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
