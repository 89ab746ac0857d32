"""Reads a W&B offline run's ``run-<id>.wandb`` file back (wandb ships no reader for it).

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
blocks of records, each with a 7-byte header (CRC32, length, kind: 1 full, 2 first, 3 middle,
4 last) and a piece of a serialised ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7


def records(path: Path) -> Iterator[Any]:
    """Every ``Record`` in the file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (2, 3):
            pending += chunk
        else:
            break  # zeros: the end of what was written


def history(path: Path) -> list[dict[str, Any]]:
    """The rows ``run.log`` wrote, as dicts of the logged keys; an image's fields come as
    ``key/field`` (``confusion_matrix/path``, ``confusion_matrix/_type``, ...)."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            rows.append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
    return rows


def of_type(path: Path, kind: str) -> list[Any]:
    """The records of one kind (``run``, ``config``, ``artifact``, ...)."""
    return [getattr(r, kind) for r in records(path) if r.WhichOneof("record_type") == kind]


def run_files(out_dir: Path) -> list[Path]:
    """The ``run-<id>.wandb`` files under ``out_dir/wandb``, oldest first, complete.

    W&B's service process writes the file; ``run.finish()`` can return before it is all on
    disk (seen under load). ``wandb.teardown()`` ends that process, which flushes it first.
    """
    import wandb

    wandb.teardown()
    return sorted((out_dir / "wandb").glob("offline-run-*/run-*.wandb"))
