"""The image checks' results on disk: a check is done once per version of a file.

One file per key (the data root and the pixel budget, for a folder tree), under
``default_cache_dir()``, in the start-up caches' one format (``trainer.data.cache_store``).
It holds the checked paths as one byte blob and, as numpy arrays, each file's size, mtime,
inode and ctime, and its check level and failure reason: 1.28 M entries load in well under a
second and take no Python object per image until they are looked up.

Each result is stored with the file's version, (size, mtime, inode, ctime), and dropped
(``CheckTable.refresh``) when the version it is compared with differs. Size and mtime alone
are not enough: a file rewritten in place by a tool that puts its mtime back (``cp -p``,
``rsync -t``, ``tar x``, ``touch -r``) at the same size would keep a stale verdict. Its ctime
cannot be put back (the kernel sets it on every write, and no call sets it), and the inode
changes when a file is replaced. Which results are compared is the check's choice
(``preflight``'s ``listed``): all of them, or, for the samples of a tree just listed, only
the failures and the missing ones. What no key short of reading every byte can see (bit rot
under the file system) is left to the loaders, which decode with Pillow and skip a file
that fails (``trainer.data.skipping``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data import cache_store

logger = logging.getLogger("trainer.data")

# Check levels, stored per file: a full decode also answers a request for a header check.
HEADER, FULL = 1, 2
# Sizes that are not sizes: the file cannot be stat'ed, or it is not a regular file (a FIFO,
# a socket, a device), which no check may open (opening a FIFO blocks until a writer comes).
MISSING, NOT_REGULAR = -1, -2
_SEP = b"\0"  # cannot occur in a path
_KIND, _VERSION = "checks", 2  # bump the version when the layout changes
_KEY_FIELDS = ("size", "mtime", "ino", "ctime")
_DTYPES = {"paths": "uint8", **dict.fromkeys(_KEY_FIELDS, "int64"), "level": "int8",
           "reason": "int32"}  # fmt: skip
# The perceptual hashes (--check-leakage), stored only once computed: a cache written without
# them (by a run without the flag, or before they existed) is still read, as "not hashed".
_OPTIONAL = {"phash": "uint64", "hashed": "int8"}
# ``hashed`` per file: not yet, done (``phash`` holds it), or failed (the file does not decode).
NOT_HASHED, HASHED, HASH_FAILED = 0, 1, 2


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
class FileStats:
    """What identifies the version of each file of a list (int64 arrays aligned with it).

    Attributes:
        size: bytes; ``MISSING`` or ``NOT_REGULAR`` (then the other fields are 0).
        mtime, ino, ctime: mtime in ns, inode, ctime in ns.
    """

    size: np.ndarray
    mtime: np.ndarray
    ino: np.ndarray
    ctime: np.ndarray

    @classmethod
    def empty(cls, n: int) -> FileStats:
        return cls(np.full(n, MISSING, np.int64), *(np.zeros(n, np.int64) for _ in range(3)))

    def fields(self) -> tuple[np.ndarray, ...]:
        return self.size, self.mtime, self.ino, self.ctime


def stat_all(paths: Sequence[str]) -> FileStats:
    """The ``FileStats`` of ``paths`` (one ``stat`` each)."""
    out = FileStats.empty(len(paths))
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            out.size[i] = NOT_REGULAR
            continue
        out.size[i], out.mtime[i] = st.st_size, st.st_mtime_ns
        out.ino[i], out.ctime[i] = st.st_ino, st.st_ctime_ns
    return out


@dataclass
class CheckTable:
    """Check results aligned with a list of paths.

    Attributes:
        stats: each file's version when it was checked.
        level: 0 not checked, ``HEADER`` or ``FULL``.
        reason: index into ``reasons`` of why the file is unusable, -1 when it is fine.
        reasons: the distinct failure messages.
        phash: each file's perceptual hash (``trainer.data.phash``), where ``hashed`` says so.
        hashed: ``NOT_HASHED``, ``HASHED`` or ``HASH_FAILED``.
    """

    stats: FileStats
    level: np.ndarray
    reason: np.ndarray
    reasons: list[str]
    phash: np.ndarray
    hashed: np.ndarray

    @classmethod
    def empty(cls, stats: FileStats) -> CheckTable:
        n = len(stats.size)
        return cls(stats, np.zeros(n, np.int8), np.full(n, -1, np.int32), [],
                   np.zeros(n, np.uint64), np.zeros(n, np.int8))  # fmt: skip

    def refresh(self, idx: np.ndarray, now: FileStats) -> None:
        """Take ``now``, the versions of the files at ``idx``, as theirs: the result of each
        whose version differs from the one it was checked at is dropped (level 0)."""
        changed = now.size < 0
        for old, new in zip(self.stats.fields(), now.fields(), strict=True):
            changed |= old[idx] != new
            old[idx] = new
        gone = idx[changed]
        self.level[gone], self.reason[gone] = 0, -1
        self.phash[gone], self.hashed[gone] = 0, NOT_HASHED

    def set_reason(self, i: int, text: str | None) -> None:
        if text is None:
            self.reason[i] = -1
            return
        try:
            self.reason[i] = self.reasons.index(text)
        except ValueError:
            self.reasons.append(text)
            self.reason[i] = len(self.reasons) - 1


def load(path: Path, paths: Sequence[str], blob: bytes) -> CheckTable:
    """The results stored at ``path`` for ``paths``, with the versions of the files they
    were found at (``CheckTable.refresh`` drops those of the files changed since); ``blob``
    is ``encode_paths(paths)``.

    A path not in the cache comes back with level 0 (to be checked) and a ``MISSING``
    version. A missing, unreadable or inconsistent cache file is simply a miss.
    """
    table = CheckTable.empty(FileStats.empty(len(paths)))
    stored = cache_store.read(path, _KIND, _VERSION, _DTYPES, _OPTIONAL)
    if stored is None:
        return table
    z, reasons = stored
    n = len(z["level"])
    if (
        not isinstance(reasons, list)
        or not all(isinstance(r, str) for r in reasons)
        or any(len(z[k]) != n for k in _DTYPES if k != "paths")
        or ((z["level"] < 0) | (z["level"] > FULL)).any()
        or ((z["reason"] < -1) | (z["reason"] >= len(reasons))).any()
        or (("phash" in z) != ("hashed" in z))
        or any(len(z[k]) != n for k in _OPTIONAL if k in z)
        or ("hashed" in z and ((z["hashed"] < NOT_HASHED) | (z["hashed"] > HASH_FAILED)).any())
    ):
        logger.debug("ignoring the check cache %s: inconsistent arrays", path)
        return table
    c_blob = z["paths"].tobytes()
    if c_blob == blob and n == len(paths):
        pos = np.arange(len(paths))  # the common case: the same files in the same order
        src = pos
    else:
        names = c_blob.split(_SEP) if c_blob else []
        if len(names) != n:
            return table
        where = {os.fsdecode(b): i for i, b in enumerate(names)}
        found = [(i, where.get(p, -1)) for i, p in enumerate(paths)]
        pos = np.array([i for i, j in found if j >= 0], np.int64)
        src = np.array([j for _, j in found if j >= 0], np.int64)
    for name, field in zip(_KEY_FIELDS, table.stats.fields(), strict=True):
        field[pos] = z[name][src]
    table.level[pos] = z["level"][src]
    table.reason[pos] = z["reason"][src]
    table.reasons = list(reasons)
    if "hashed" in z:
        table.phash[pos] = z["phash"][src]
        table.hashed[pos] = z["hashed"][src]
    return table


def save(path: Path, blob: bytes, table: CheckTable) -> bool:
    """Store ``table`` (aligned with the paths in ``blob``) at ``path``, atomically; False when
    the cache folder is not writable (the check then simply runs again next time)."""
    arrays = dict(zip(_KEY_FIELDS, table.stats.fields(), strict=True))
    arrays.update(paths=np.frombuffer(blob, np.uint8), level=table.level, reason=table.reason)
    if table.hashed.any():  # a cache of a run without --check-leakage stays as small as before
        arrays.update(phash=table.phash, hashed=table.hashed)
    return cache_store.write(path, _KIND, _VERSION, arrays, table.reasons)
