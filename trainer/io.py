"""Crash-consistent file writing: a temp file in the same folder, fsync, os.replace, fsync dir.

Every temp file is named ``.<name>.<8 hex digits>.tmp`` beside its target (``temp_path``), so
``clean_stale_temp_files`` can remove what a killed run left without touching anyone's files.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once the block ends without an error.

    Writes go to a temp file in the same folder, which is fsynced and renamed over ``path``:
    a crash leaves either the old file or the new one, never half of one.

    Example:
        >>> with atomic_open("checkpoints/last.pt") as f:
        ...     torch.save(state, f)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Make ``dst`` a copy of the finished file ``src``, atomically: a hard link when the
    file system has them (no second write), else a full copy.

    ``src`` must only ever be replaced, never written in place (as ``atomic_open`` does):
    ``dst`` then keeps its content when ``src`` is later replaced.
    """
    src, dst = Path(src), Path(dst)
    tmp = temp_path(dst)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        with open(src, "rb") as f_src, atomic_open(dst) as f_dst:
            shutil.copyfileobj(f_src, f_dst, 1 << 20)
        return
    _fsync_dir(dst.parent)


# Our temp names: 8 hex digits (8 of mkstemp's characters and ".<pid>.link" in older versions).
_TEMP_NAME = re.compile(r"\..+\.(?:[a-z0-9_]{8}|\d+\.link)\.tmp")


def temp_path(path: str | os.PathLike[str]) -> Path:
    """A fresh temp name beside ``path``: ``.<name>.<8 hex digits>.tmp``, not yet existing."""
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        if not os.path.lexists(tmp):
            return tmp


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named like a temp file of ours (see ``temp_path``)."""
    return _TEMP_NAME.fullmatch(Path(path).name) is not None


def _create_temp(path: Path) -> tuple[int, Path]:
    # Mode 0666 through os.open: the kernel applies the process umask, as it does for any
    # new file. (mkstemp makes 0600 files, and reading the umask means setting it, which
    # races between threads and once left it at 000.)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = temp_path(path)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue  # taken between the check and the open


def replace_durably(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """``os.replace(src, dst)``, then fsync the folder so the rename survives a power cut."""
    os.replace(src, dst)
    _fsync_dir(Path(dst).parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform lets a folder be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``obj`` as strict JSON: a NaN or infinite number (a metric without a value) is null,
    which every JSON reader takes (a browser's ``JSON.parse`` refuses ``NaN``)."""
    text = json.dumps(json_safe(obj), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, containers rebuilt."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def clean_stale_temp_files(folder: str | os.PathLike[str]) -> int:
    """Remove the temp files interrupted writes left anywhere under ``folder``; returns how many.

    Only files named like ours (``is_temp_file``) go; any other file stays.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.rglob(".*.tmp"):
        if p.is_file() and is_temp_file(p):
            with contextlib.suppress(OSError):
                p.unlink()
                removed += 1
    return removed


# --------------------------------------------------------------------------- output problems
def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk, or the user's quota on it, is full."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def free_space(folder: str | os.PathLike[str]) -> str:
    """For error messages: "<folder> has 12.3 MB free", for the file system holding ``folder``
    (or its nearest existing parent); "" when it cannot be told."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return ""
    units = ["B", "KB", "MB", "GB", "TB"]
    size = float(free)
    while size >= 1000 and len(units) > 1:
        size, units = size / 1000, units[1:]
    return f"{folder} has {size:.3g} {units[0]} free"


def unwritable(folder: str | os.PathLike[str]) -> str | None:
    """Why files cannot be created in ``folder`` (made if missing), or None when they can.

    Checked with ``os.access`` on the folder, or on its nearest existing parent when it is
    still to be made: that also tells a read-only file system, for root too.
    """
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable (a read-only folder or file system)"
    return None


def human_bytes(n: float) -> str:
    """``n`` bytes for a message: ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
