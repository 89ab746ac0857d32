"""Shared fixtures: a tiny image tree on disk."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_COUNTS: dict[str, int] = {"cat": 6, "dog": 5, "bird": 4}

# tools/train.py flags for a run that takes seconds on tiny trees.
FAST_CLI = ["--img-size", "16", "--batch-size", "8", "--workers", "0", "--model", "small_cnn",
            "--device", "cpu", "--quiet"]  # fmt: skip
# Every optional output off: for tests about the loop, not the artefacts.
NO_OUTPUTS = ["--no-confusion-matrix", "--no-dataset-stats", "--no-model-info",
              "--no-history-plots", "--no-sampler-stats", "--no-samples", "--no-export",
              "--no-report"]  # fmt: skip


def tree_digest(root: Path, *, mtimes: bool = False) -> str:
    """A hash of every path and file under ``root`` (and their mtimes if asked)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            if mtimes:
                h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def make_tree(
    root: Path,
    counts: Mapping[str, int] | None = None,
    size: tuple[int, int] = (20, 16),
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/<i>.png|jpg`` random images and return ``root``.

    Args:
        root: folder to create the tree in (created if missing).
        counts: images per class, written in every split; defaults to ``TINY_COUNTS``.
        size: image size as PIL gives it, ``(width, height)``.
        splits: split folders to create; empty writes the class folders straight into ``root``.
        seed: seeds the pixel noise, so two calls with the same arguments write the same files.
    """
    counts = TINY_COUNTS if counts is None else counts
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for cls, n in counts.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # Each class gets its own mean colour so a model could learn the tree.
                base = (sum(map(ord, cls)) % 7) * 30
                arr = rng.integers(base, base + 60, (size[1], size[0], 3), dtype=np.uint8)
                img = Image.fromarray(arr)
                if i % 2:
                    img.save(folder / f"{i}.jpg", quality=90)
                else:
                    img.save(folder / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny images gain nothing from intra-op threads, and on a busy 2-core machine their
    # spin-waits made the suite several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    """A 3-class (cat 6, dog 5, bird 4 images per split) train/val tree of 20x16 images."""
    return make_tree(tmp_path / "tiny")
