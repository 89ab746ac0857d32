"""The RAM cache: every image decoded once up front, pre-resized, and kept in memory.

The images are decoded on threads (the decoders release the GIL) in chunks, with at most two
chunks per thread in flight and the results consumed in order, so what is held besides the
cache itself is bounded by the window, not by the number of images; no object per image is
held for an image that is not kept. An image that cannot be decoded is dropped and reported
like the start-up check's rejects, and counts with them against ``max_bad_fraction``.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2

from trainer.data.decode import load_image
from trainer.data.preflight import progress_bar
from trainer.data.scan import Sample
from trainer.data.transforms import EvalResize, as_resize
from trainer.errors import DataError
from trainer.io import human_bytes

logger = logging.getLogger("trainer.data")

CHUNK = 32  # images per task: the executor's cost per task becomes noise

# One image's outcome: the image (None when not kept) and why it is unusable (None if fine).
Decoded = tuple[torch.Tensor | None, str | None]


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
    img_size: int | EvalResize,
    keep: bool,
    cache_max_bytes: int,
    max_bad_fraction: float,
    workers: int,
    native: bool = True,
    max_pixels: int | None = None,
    known_bad: Sequence[tuple[Path, str]] = (),
) -> CheckedSamples:
    """Decode every image once, on threads; drop the unreadable ones; optionally keep the rest.

    Kept images are pre-resized to the validation resize size (``EvalResize.resize_size``) when
    larger; with a squash, the validation and test images are kept squashed, so that they are
    served with the pixels the disk path computes. If they need more than ``cache_max_bytes``,
    nothing is kept: decoding stops there, it warns, and the data reads from disk (where an
    unreadable image is skipped in training).

    Args:
        splits: split name -> samples.
        root: the tree's root, for the messages.
        img_size: how validation resizes (an ``EvalResize``; an int: the default one at that
            size).
        keep: keep the decoded images (``cache="ram"``).
        cache_max_bytes: memory the kept images may use.
        max_bad_fraction: largest share of unusable images tolerated.
        workers: the loader's worker count; up to 16 threads decode.
        native: decode with torchvision.io where it applies (see ``load_image``).
        max_pixels: the pixel budget (``load_image``): a larger image counts as unusable.
        known_bad: images already left out of ``splits`` as unusable (the start-up check's
            rejects, a label file's missing images): they count with the ones found here.

    Raises:
        DataError: more than ``max_bad_fraction`` of the images are unusable.
    """
    total = sum(len(s) for s in splits.values())
    eval_resize = as_resize(img_size)
    short_side = eval_resize.resize_size
    resize = v2.Resize(short_side, antialias=True)
    # Squash: the validation and test copies are the squashed images themselves, which the
    # validation resize leaves as they are; a short-side copy would be resized twice, and
    # differ from what the same image read from disk gives.
    squash = eval_resize.transform() if eval_resize.mode == "squash" else None
    budget = cache_max_bytes if keep else 0

    def decode(items: Sequence[tuple[str, Path]]) -> list[Decoded]:
        out: list[Decoded] = []
        for split, path in items:
            try:
                img = load_image(path, native=native, max_pixels=max_pixels)
                if squash is not None and split != "train":
                    img = squash(img)
                elif min(img.shape[-2:]) > short_side:
                    img = resize(img)
                out.append((img if keep else None, None))
            except Exception as e:
                out.append((None, f"{type(e).__name__}: {e}".strip()))
        return out

    flat = [(name, s) for name, samples in splits.items() for s in samples]
    kept: dict[str, list[Sample]] = {name: [] for name in splits}
    images: dict[str, list[torch.Tensor]] | None = {name: [] for name in splits}
    bad_files: list[tuple[Path, str]] = []
    used, done = 0, 0
    over = [False]  # read by the chunk feeder: stop decoding once the cache cannot fit
    threads = max(1, min(16, workers or 1, total))
    with progress_bar(total, "caching images") as bar:
        for chunk, results in _in_order(decode, flat, threads, stop=lambda: over[0]):
            for (name, sample), (img, reason) in zip(chunk, results, strict=True):
                if reason is not None:
                    bad_files.append((sample[0], reason))
                    continue
                kept[name].append(sample)
                if img is not None and images is not None:
                    used += img.numel()
                    if used > budget:
                        over[0], images = True, None  # the kept ones are freed here
                    else:
                        images[name].append(img)
            done += len(chunk)
            bar.update(len(chunk))
    for name, sample in flat[done:]:  # not decoded: over budget, read from disk
        kept[name].append(sample)
    _check_fraction(bad_files, known_bad, total, max_bad_fraction, root)
    if not keep:
        return CheckedSamples(kept, bad_files, None)
    if images is None:
        # stacklevel 3: past this function and ImageFolderData.__init__, to the caller's line.
        warnings.warn(
            f"The decoded images of {root} need more than cache_max_bytes="
            f"{human_bytes(cache_max_bytes)}; not caching, reading from disk instead. "
            "Raise cache_max_bytes or use a smaller img_size to cache.",
            stacklevel=3,
        )
        logger.warning("RAM cache does not fit in %s; reading from disk.", human_bytes(cache_max_bytes))
        return CheckedSamples(kept, bad_files, None)
    logger.info("Cached %d images in RAM (%s).", total - len(bad_files), human_bytes(used))
    return CheckedSamples(kept, bad_files, images)


def _in_order(
    fn: Callable[[list[tuple[str, Path]]], list[Decoded]],
    items: Sequence[tuple[str, Sample]],
    threads: int,
    stop: Callable[[], bool],
) -> Iterator[tuple[Sequence[tuple[str, Sample]], list[Decoded]]]:
    """``(chunk of items, fn(its (split, path) pairs))`` in order, at most two chunks per
    thread in flight; no new chunk once ``stop()`` is true (the ones in flight still come)."""
    window: deque[tuple[Sequence[tuple[str, Sample]], Future[list[Decoded]]]] = deque()
    starts = iter(range(0, len(items), CHUNK))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while True:
            while len(window) < 2 * threads and not stop():
                start = next(starts, None)
                if start is None:
                    break
                chunk = items[start : start + CHUNK]
                window.append((chunk, pool.submit(fn, [(name, s[0]) for name, s in chunk])))
            if not window:
                return
            chunk, future = window.popleft()
            yield chunk, future.result()


def _check_fraction(
    bad_files: Sequence[tuple[Path, str]],
    known_bad: Sequence[tuple[Path, str]],
    total: int,
    max_bad_fraction: float,
    root: Path,
) -> None:
    """Warn about ``bad_files``; raise DataError when they and ``known_bad`` are too many."""
    if not bad_files:
        return
    shown = "; ".join(f"{p} ({r})" for p, r in [*known_bad, *bad_files][:5])
    n_bad, n_all = len(bad_files) + len(known_bad), total + len(known_bad)
    fraction = n_bad / n_all
    if fraction > max_bad_fraction:
        raise DataError(
            f"{n_bad} of {n_all} images under {root} ({fraction:.1%}) cannot be decoded or "
            f"used, more than max_bad_fraction={max_bad_fraction}. First ones: {shown}. "
            "Remove or replace the broken files, or raise --max-bad-fraction to skip them."
        )
    logger.warning(
        "Skipping %d unreadable image(s) of %d under %s: %s%s",
        len(bad_files),
        total,
        root,
        "; ".join(f"{p} ({r})" for p, r in bad_files[:5]),
        " ..." if len(bad_files) > 5 else "",
    )
