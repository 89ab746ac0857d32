"""Split leakage: the same image (byte for byte) in more than one split.

A val or test image that is also a training image inflates the metrics. ``find_leaks`` finds
exact duplicates by content hash (SHA-256) across the splits, whatever their paths or names,
for a tree and a label file alike. Only files whose size occurs in two splits or more are read,
so a typical dataset is mostly answered from the file sizes.

Example:
    >>> leaks = find_leaks({"train": data.train_samples, "val": data.val_samples})
    >>> leaks[0]["files"]  # [{"split": "train", "path": ...}, {"split": "val", "path": ...}]
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trainer.data.scan import Sample


def find_leaks(splits: Mapping[str, Sequence[Sample]], *, workers: int = 4) -> list[dict[str, Any]]:
    """Groups of identical files that appear in more than one split.

    Args:
        splits: split name -> ``(path, class index)`` samples.
        workers: threads that hash files.

    Returns:
        One ``{"sha256", "splits", "files": [{"split", "path"}, ...]}`` per duplicated content,
        files in split order then path order; groups sorted by their first file. Empty when
        no image is in two splits. Duplicates within one split are not leaks and not listed.
    """
    by_size: dict[int, list[tuple[str, Path]]] = defaultdict(list)
    for split, samples in splits.items():
        for path, _ in samples:
            by_size[path.stat().st_size].append((split, path))
    # Files of equal content have equal sizes: only sizes shared by two splits need hashing.
    candidates = [f for group in by_size.values() if len({s for s, _ in group}) > 1 for f in group]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = list(pool.map(_sha256, (p for _, p in candidates)))
    by_digest: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for digest, file in zip(digests, candidates, strict=True):
        by_digest[digest].append(file)
    order = {split: i for i, split in enumerate(splits)}
    leaks = []
    for digest, files in by_digest.items():
        names = {s for s, _ in files}
        if len(names) < 2:
            continue
        files = sorted(files, key=lambda f: (order[f[0]], f[1]))
        in_splits: list[str] = sorted(names, key=lambda s: order[s])
        leaks.append(
            {
                "sha256": digest,
                "splits": in_splits,
                "files": [{"split": s, "path": str(p)} for s, p in files],
            }
        )
    return sorted(leaks, key=lambda g: (order[g["files"][0]["split"]], g["files"][0]["path"]))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:  # hashlib.file_digest is Python 3.11+; we support 3.10
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
