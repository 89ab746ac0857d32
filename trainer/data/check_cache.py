"""The image checks' results on disk, keyed by (path, size, mtime): a check is done once.

One file per key (the data root, for a folder tree), under ``default_cache_dir()``. It holds
the checked paths as one byte blob and their sizes, mtimes, check level and failure reason as
numpy arrays: 1.28 M entries load in well under a second and take no Python object per image
until they are looked up. A file whose size or mtime changed since is checked again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.io import atomic_write_bytes

logger = logging.getLogger("trainer.data")

# Check levels, stored per file: a full decode also answers a request for a header check.
HEADER, FULL = 1, 2
_SEP = b"\0"  # cannot occur in a path
_FORMAT = 1  # bump when the layout changes: an old file is then ignored


def default_cache_dir() -> Path:
    """``$IMGTRAINER_CHECK_CACHE``, else ``$IMGTRAINER_CACHE/checks`` (where the demo data
    lives too), else ``~/.cache/imgtrainer/checks``."""
    if os.environ.get("IMGTRAINER_CHECK_CACHE"):
        return Path(os.environ["IMGTRAINER_CHECK_CACHE"]).expanduser()
    base = os.environ.get("IMGTRAINER_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "imgtrainer") / "checks"


def cache_file(cache_dir: Path, key: str) -> Path:
    """Where the results for ``key`` live: ``<cache_dir>/<hash of key>.npz``."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return cache_dir / f"{digest}.npz"


def encode_paths(paths: Sequence[str]) -> bytes:
    """The paths as one NUL-separated byte string (how they are stored and compared)."""
    return _SEP.join(os.fsencode(p) for p in paths)


@dataclass
class CheckTable:
    """Check results aligned with a list of paths.

    Attributes:
        size: each file's size in bytes (-1: it could not be stat'ed).
        mtime: each file's mtime in ns.
        level: 0 not checked, ``HEADER`` or ``FULL``.
        reason: index into ``reasons`` of why the file is unusable, -1 when it is fine.
        reasons: the distinct failure messages.
    """

    size: np.ndarray
    mtime: np.ndarray
    level: np.ndarray
    reason: np.ndarray
    reasons: list[str]

    @classmethod
    def empty(cls, n: int) -> CheckTable:
        return cls(
            np.full(n, -1, np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, np.int8),
            np.full(n, -1, np.int32),
            [],
        )

    def set_reason(self, i: int, text: str | None) -> None:
        if text is None:
            self.reason[i] = -1
            return
        try:
            self.reason[i] = self.reasons.index(text)
        except ValueError:
            self.reasons.append(text)
            self.reason[i] = len(self.reasons) - 1


def stat_all(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sizes and mtimes (ns) of ``paths``; size -1 where a file cannot be stat'ed."""
    size = np.full(len(paths), -1, np.int64)
    mtime = np.zeros(len(paths), np.int64)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        size[i], mtime[i] = st.st_size, st.st_mtime_ns
    return size, mtime


def load(
    path: Path, paths: Sequence[str], blob: bytes, size: np.ndarray, mtime: np.ndarray
) -> CheckTable:
    """The results stored at ``path`` for the files whose (path, size, mtime) still match.

    Files not in the cache, or changed since, come back with level 0 (to be checked). A
    missing or unreadable cache file is simply a miss.
    """
    table = CheckTable.empty(len(paths))
    table.size[:], table.mtime[:] = size, mtime
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != _FORMAT:
                return table
            c_blob = z["paths"].tobytes()
            c_size, c_mtime = z["size"], z["mtime"]
            c_level, c_reason = z["level"], z["reason"]
            table.reasons = z["reasons"].tobytes().decode("utf-8", "replace").split("\0")
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if not isinstance(e, FileNotFoundError):  # a damaged file: check again, rewrite it
            logger.debug("ignoring the check cache %s: %s", path, e)
        return table
    if c_blob == blob and len(c_size) == len(paths):
        pos = np.arange(len(paths))  # the common case: the same files in the same order
        src = pos
    else:
        where = {os.fsdecode(b): i for i, b in enumerate(c_blob.split(_SEP))} if c_blob else {}
        found = [(i, where.get(p, -1)) for i, p in enumerate(paths)]
        pos = np.array([i for i, j in found if j >= 0], np.int64)
        src = np.array([j for _, j in found if j >= 0], np.int64)
    same = (c_size[src] == size[pos]) & (c_mtime[src] == mtime[pos]) & (size[pos] >= 0)
    pos, src = pos[same], src[same]
    table.level[pos] = c_level[src]
    table.reason[pos] = c_reason[src]
    return table


def save(path: Path, blob: bytes, table: CheckTable) -> bool:
    """Store ``table`` (aligned with the paths in ``blob``) at ``path``, atomically.

    Returns False, with a debug log line, when the cache folder is not writable: the check
    then simply runs again next time.
    """
    buf = io.BytesIO()
    np.savez(
        buf,
        format=np.array(_FORMAT),
        paths=np.frombuffer(blob, np.uint8),
        size=table.size,
        mtime=table.mtime,
        level=table.level,
        reason=table.reason,
        reasons=np.frombuffer("\0".join(table.reasons).encode("utf-8"), np.uint8),
    )
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        logger.debug("cannot write the check cache %s: %s", path, e)
        return False
    return True
