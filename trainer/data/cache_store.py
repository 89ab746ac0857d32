"""The one on-disk format of the start-up caches (the tree scan and the image checks).

A cache file is an uncompressed ``.npz`` archive read with ``allow_pickle=False``: a few
1-D numpy arrays (no Python object per image: 1.28 M entries load in well under a second),
one JSON document of small metadata, and a header naming the cache's kind and layout
version. It is written atomically (a reader never sees half a file).

A cache is only ever an optimisation, so ``read`` trusts nothing in the file: a missing,
truncated, damaged, compressed (a zip bomb), old, foreign or crafted file, or one whose
arrays have another dtype or shape than the reader expects, is a miss (None), never an error.
The callers check what the arrays mean (lengths agree, indices in range) the same way.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trainer.io import atomic_write_bytes

logger = logging.getLogger("trainer.data")

_HEADER = "header"  # JSON: {"kind", "version", "meta"}


def write(
    path: Path, kind: str, version: int, arrays: Mapping[str, np.ndarray], meta: Any = None
) -> bool:
    """Store ``arrays`` (1-D) and ``meta`` (JSON-able) at ``path`` as ``kind`` ``version``.

    Returns False, with a debug log line, when the cache folder is not writable: the work is
    then simply done again next time.
    """
    header = json.dumps({"kind": kind, "version": version, "meta": meta})
    buf = io.BytesIO()
    members: dict[str, Any] = {_HEADER: np.frombuffer(header.encode(), np.uint8), **arrays}
    np.savez(buf, **members)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        logger.debug("cannot write the %s cache %s: %s", kind, path, e)
        return False
    return True


def read(
    path: Path,
    kind: str,
    version: int,
    dtypes: Mapping[str, str],
    optional: Mapping[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], Any] | None:
    """The arrays named in ``dtypes`` and the metadata stored at ``path``, or None.

    ``dtypes`` maps each array's name to its numpy dtype (e.g. ``"int64"``); an array
    missing, not 1-D, or of another dtype is a miss. ``optional`` names arrays that a file
    of the same version may lack (added later, or only written on demand): those present are
    returned and checked like the others; a missing one is simply not in the result.
    """
    optional = optional or {}
    try:
        with open(path, "rb") as f:
            on_disk = os.fstat(f.fileno()).st_size
            if f.read(4) != b"PK\x03\x04":  # a zip archive, not a lone .npy array
                raise ValueError("not an .npz archive")
            f.seek(0)
            with np.load(f, allow_pickle=False) as z:
                members = z.zip.infolist()
                # Stored members only, no larger than the file: nothing can inflate in memory.
                if any(m.compress_type != zipfile.ZIP_STORED for m in members) or (
                    sum(m.file_size for m in members) > on_disk
                ):
                    raise ValueError("compressed or inconsistent members")
                header = json.loads(z[_HEADER].tobytes())
                if header.get("kind") != kind or header.get("version") != version:
                    return None
                arrays = {name: z[name] for name in dtypes}
                arrays.update({name: z[name] for name in optional if name in z.files})
    except FileNotFoundError:
        return None
    except Exception as e:  # anything a damaged or crafted file can raise: a miss
        logger.debug("ignoring the %s cache %s: %s", kind, path, e)
        return None
    for name, want in {**dtypes, **optional}.items():
        if name not in arrays:
            continue
        got = arrays[name]
        if got.ndim != 1 or got.dtype != np.dtype(want):
            logger.debug("ignoring the %s cache %s: %s is %s %s", kind, path, name, got.dtype,
                         got.shape)  # fmt: skip
            return None
    return arrays, header.get("meta")
