"""Verify every image once up front, and optionally keep them decoded in RAM."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from trainer.data.decode import load_image
from trainer.data.scan import Sample
from trainer.data.transforms import resize_size
from trainer.errors import DataError

logger = logging.getLogger("trainer.data")


@dataclass
class CheckedSamples:
    """What ``verify_and_cache`` found.

    Attributes:
        samples: each split's samples without the unreadable ones, in their order.
        bad_files: ``(path, reason)`` for each unreadable image, in sample order.
        images: each split's decoded images aligned with ``samples``, or None when they are
            not cached (not asked for, or over the byte budget).
    """

    samples: dict[str, list[Sample]]
    bad_files: list[tuple[Path, str]]
    images: dict[str, list[torch.Tensor]] | None


def verify_and_cache(
    splits: Mapping[str, Sequence[Sample]],
    *,
    root: Path,
    img_size: int,
    keep: bool,
    cache_max_bytes: int,
    max_bad_fraction: float,
    workers: int,
    native: bool = True,
) -> CheckedSamples:
    """Decode every image once, on threads; drop the unreadable ones; optionally keep the rest.

    Kept images are pre-resized to the validation resize size (``resize_size(img_size)``) when
    larger. If they need more than ``cache_max_bytes``, nothing is kept: it warns and the data
    reads from disk.

    Args:
        splits: split name -> samples.
        root: the tree's root, for the messages.
        img_size: side of the square images the model sees.
        keep: keep the decoded images (``cache="ram"``).
        cache_max_bytes: memory the kept images may use.
        max_bad_fraction: largest share of unreadable images tolerated.
        workers: the loader's worker count; up to 16 threads decode.
        native: decode with torchvision.io where it applies (see ``load_image``).

    Raises:
        DataError: more than ``max_bad_fraction`` of the images cannot be decoded.
    """
    paths = [p for samples in splits.values() for p, _ in samples]
    if not paths:
        return CheckedSamples({k: list(v) for k, v in splits.items()}, [], None)
    short_side = resize_size(img_size)
    resize = v2.Resize(short_side, antialias=True)
    budget = [cache_max_bytes] if keep else [0]

    def check(path: Path) -> tuple[torch.Tensor | None, str | None]:
        try:
            img = load_image(path, native=native)
        except Exception as e:
            return None, f"{type(e).__name__}: {e}".strip()
        if not keep or budget[0] < 0:
            return None, None
        if min(img.shape[-2:]) > short_side:
            img = resize(img)
        # A rough running budget; a race between threads costs at most a few images.
        budget[0] -= img.numel()
        return img, None

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency, but only for the bar

        def tqdm(x: Any, **_: Any) -> Any:
            return x

    threads = max(1, min(16, workers or 1, len(paths)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(
            tqdm(
                pool.map(check, paths),
                total=len(paths),
                desc="checking images",
                unit="img",
                disable=not sys.stderr.isatty(),
                leave=False,
            )
        )
    bad = {p: r for p, (_, r) in zip(paths, results, strict=True) if r is not None}
    bad_files = [(p, bad[p]) for p in paths if p in bad]
    if bad:
        shown = "; ".join(f"{p} ({r})" for p, r in bad_files[:5])
        fraction = len(bad) / len(paths)
        if fraction > max_bad_fraction:
            raise DataError(
                f"{len(bad)} of {len(paths)} images under {root} ({fraction:.1%}) "
                f"cannot be decoded, more than max_bad_fraction={max_bad_fraction}. "
                f"First ones: {shown}. Remove or replace the broken files, or raise "
                "--max-bad-fraction to skip them."
            )
        logger.warning(
            "Skipping %d unreadable image(s) of %d under %s: %s%s",
            len(bad),
            len(paths),
            root,
            shown,
            " ..." if len(bad) > 5 else "",
        )

    images = iter(results)
    kept_samples: dict[str, list[Sample]] = {}
    cache: dict[str, list[torch.Tensor]] = {}
    for name, samples in splits.items():
        kept = [(s, next(images)) for s in samples]
        kept_samples[name] = [s for s, (_, r) in kept if r is None]
        cache[name] = [img for _, (img, r) in kept if r is None and img is not None]
    if not keep:
        return CheckedSamples(kept_samples, bad_files, None)
    if budget[0] < 0:
        # stacklevel 3: past this function and ImageFolderData.__init__, to the caller's line.
        warnings.warn(
            f"The decoded images of {root} need more than cache_max_bytes="
            f"{_human(cache_max_bytes)}; not caching, reading from disk instead. "
            "Raise cache_max_bytes or use a smaller img_size to cache.",
            stacklevel=3,
        )
        logger.warning("RAM cache does not fit in %s; reading from disk.", _human(cache_max_bytes))
        return CheckedSamples(kept_samples, bad_files, None)
    logger.info(
        "Cached %d images in RAM (%s).",
        len(paths) - len(bad),
        _human(cache_max_bytes - budget[0]),
    )
    return CheckedSamples(kept_samples, bad_files, cache)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
