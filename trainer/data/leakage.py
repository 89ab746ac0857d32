"""Split leakage: the same image in more than one split, byte for byte or re-encoded.

A val or test image that is also a training image inflates the metrics. ``find_leaks`` finds
exact duplicates by content hash (SHA-256) across the splits, whatever their paths or names,
for a tree and a label file alike. Only files whose size occurs in two splits or more are read,
so a typical dataset is mostly answered from the file sizes.

``find_near_duplicates`` finds the same picture resized, re-encoded (JPEG at another quality,
PNG) or slightly cropped, in two stages: pairs of files of different splits whose 64-bit
perceptual hashes (``trainer.data.phash``; computed and cached by the start-up check) differ
in at most ``NEAR_DISTANCE`` bits are candidates; a candidate is kept when the cosine of the
two images' colour low-frequency descriptors is at least ``NEAR_SIMILARITY``. The hash alone
cannot tell copies from look-alikes on small, plain images: on the demo set, two circles of
other colours at the same place differ in 4 bits, and on scikit-learn's digits two 4s of one
writer in 6, while a digit resized to half differs from itself in up to 12. Both thresholds
were chosen by measurement (``tools/benchmarks/near_duplicates.py``).

Example:
    >>> leaks = find_leaks({"train": data.train_samples, "val": data.val_samples})
    >>> leaks[0]["files"]  # [{"split": "train", "path": ...}, {"split": "val", "path": ...}]
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.phash import descriptor, phash, popcount
from trainer.data.scan import Sample

logger = logging.getLogger("trainer.data")

NEAR_DISTANCE = 12  # candidate pairs: hashes at most this many bits apart (of 64)
NEAR_SIMILARITY = 0.99  # kept pairs: descriptors at least this close (cosine)
_BLOCK = 1 << 22  # hash pairs compared at once (32 MB of distances)


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


def find_near_duplicates(
    splits: Mapping[str, Sequence[Sample]],
    hashes: Mapping[str, int] | None = None,
    *,
    exact: Sequence[Mapping[str, Any]] = (),
    workers: int = 4,
) -> list[dict[str, Any]]:
    """Pairs of files in two splits that hold the same picture, not byte for byte.

    Args:
        splits: split name -> ``(path, class index)`` samples.
        hashes: ``str(path) -> perceptual hash`` from the start-up check; files not in it
            are hashed here (all of them when None).
        exact: ``find_leaks``'s groups: pairs of byte-identical files are listed there only.
        workers: threads that hash and decode files.

    Returns:
        One ``{"distance", "similarity", "files": [{"split", "path"}, {"split", "path"}]}``
        per pair (``distance``: the hashes' Hamming distance in bits; ``similarity``: the
        descriptors' cosine), the two files in split order; pairs sorted by distance, then
        path. Pairs within one split are not leaks and not listed.
    """
    paths = {name: [str(p) for p, _ in samples] for name, samples in splits.items()}
    known = dict(hashes or {})
    missing = [p for ps in paths.values() for p in ps if p not in known]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for p, h in zip(missing, pool.map(_phash_or_none, missing), strict=True):
            if h is not None:
                known[p] = h
        group = {f["path"]: i for i, g in enumerate(exact) for f in g["files"]}
        candidates = [
            c for c in _candidates(paths, known, pool)
            if group.get(c[1], -1) != group.get(c[3], -2)  # byte-identical: listed in ``exact``
        ]  # fmt: skip
        wanted = sorted({p for c in candidates for p in (c[1], c[3])})
        vectors = dict(zip(wanted, pool.map(_descriptor_or_none, wanted), strict=True))
    order = {split: i for i, split in enumerate(splits)}
    pairs = []
    for a_split, a_path, b_split, b_path, distance in candidates:
        va, vb = vectors[a_path], vectors[b_path]
        if va is None or vb is None or (similarity := float(va @ vb)) < NEAR_SIMILARITY:
            continue
        files = sorted([(a_split, a_path), (b_split, b_path)], key=lambda f: (order[f[0]], f[1]))
        pairs.append({
            "distance": distance,
            "similarity": round(similarity, 4),
            "files": [{"split": s, "path": p} for s, p in files],
        })  # fmt: skip
    return sorted(pairs, key=lambda q: (q["distance"], q["files"][0]["path"], q["files"][1]["path"]))


def _candidates(
    paths: Mapping[str, list[str]], known: Mapping[str, int], pool: ThreadPoolExecutor
) -> list[tuple[str, str, str, str, int]]:
    """``(split, path, other split, other path, distance)`` of each pair of hashed files in two
    splits whose hashes are at most ``NEAR_DISTANCE`` apart.

    Every pair is compared (numpy releases the GIL, so blocks run on ``pool``'s threads): on
    the loaded 2-core VM, about 50 M pairs a second and thread.
    """
    names = list(paths)
    hashed = {n: [p for p in paths[n] if p in known] for n in names}
    arrays = {n: np.array([known[p] for p in hashed[n]], np.uint64) for n in names}
    blocks = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            step = max(1, _BLOCK // max(1, len(arrays[b])))
            blocks += [(a, b, start) for start in range(0, len(arrays[a]), step) if len(arrays[b])]

    def near(block: tuple[str, str, int]) -> list[tuple[str, str, str, str, int]]:
        a, b, start = block
        rows = arrays[a][start : start + max(1, _BLOCK // len(arrays[b]))]
        d = popcount(rows[:, None] ^ arrays[b][None, :])
        return [(a, hashed[a][start + r], b, hashed[b][c], int(d[r, c]))
                for r, c in np.argwhere(d <= NEAR_DISTANCE).tolist()]  # fmt: skip

    return [pair for found in pool.map(near, blocks) for pair in found]


def _phash_or_none(path: str) -> int | None:
    try:
        return phash(path)
    except Exception:  # not decodable: the loaders skip and report it; no pair to find here
        return None


def _descriptor_or_none(path: str) -> np.ndarray | None:
    try:
        return descriptor(path)
    except Exception:
        return None


def check_leakage(
    splits: Mapping[str, Sequence[Sample]],
    hashes: Mapping[str, int] | None = None,
    workers: int = 4,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``find_leaks`` and ``find_near_duplicates``, with a warning naming what they found."""
    leaks = find_leaks(splits, workers=workers)
    near = find_near_duplicates(splits, hashes, exact=leaks, workers=workers)
    if leaks:
        shown = "; ".join(", ".join(f["path"] for f in g["files"]) for g in leaks[:5])
        logger.warning(
            "%d image(s) are in more than one split (identical files): %s%s",
            len(leaks), shown, " ..." if len(leaks) > 5 else "",
        )  # fmt: skip
    if near:
        shown = "; ".join(
            f"{q['files'][0]['path']} ~ {q['files'][1]['path']} ({q['distance']} bits)"
            for q in near[:5]
        )
        logger.warning(
            "%d pair(s) of images in two splits look like the same picture re-encoded, resized "
            "or cropped: %s%s", len(near), shown, " ..." if len(near) > 5 else "",
        )  # fmt: skip
    return leaks, near
