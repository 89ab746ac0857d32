"""The tree scan: an ImageFolder tree to lists of ``(path, class index)`` samples per split.

Plain functions returning plain data; ``ImageFolderData`` calls ``scan_tree`` and takes it from
there (verification, cache, sampler, loaders).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.decode import IMG_EXTENSIONS
from trainer.errors import DataError

logger = logging.getLogger("trainer.data")

VAL_DIR_NAMES: tuple[str, ...] = ("val", "valid", "validation")

Sample = tuple[Path, int]


@dataclass
class TreeScan:
    """What ``scan_tree`` found.

    Attributes:
        classes: the class names, sorted; a class's index is its position here.
        train: the training samples, by class, then by path.
        val: the validation samples, in the same order.
        test: the test samples (empty when the tree has no test/ folder).
        ignored_files: non-image files found, in scan order (hidden entries are not listed).
    """

    classes: list[str]
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    ignored_files: list[Path] = field(default_factory=list)


def scan_tree(root: Path, *, val_fraction: float, seed: int) -> TreeScan:
    """Scan ``root`` as ``train/``, ``val/`` (or ``valid/``, ``validation/``), optional ``test/``.

    A root holding only class folders is split per class with ``stratified_split``. Files are
    only read from the directory listing, never opened or modified.

    Args:
        root: the tree's root folder.
        val_fraction: share of each class held out for val when the root is not split.
        seed: seeds that split.

    Raises:
        DataError: the root is missing or not a folder, a split folder is missing, there are
            fewer than two classes, a class folder is empty, or val/test name an unknown class.
    """
    if not root.exists():
        raise DataError(
            f"Data folder {root} does not exist. Pass the folder that holds train/ and val/ "
            "(or one folder per class) with --data, or omit --data to use the demo dataset."
        )
    if not root.is_dir():
        raise DataError(
            f"Data path {root} is a file, not a folder. Pass the folder that holds train/ "
            "and val/ (or one folder per class); archives must be extracted first."
        )
    top = {p.name: p for p in _subdirs(root)}
    if not top:
        raise DataError(
            f"Data folder {root} holds no folders. Expected train/<class>/<images> and "
            "val/<class>/<images>, or one folder of images per class."
        )
    train_dir = top.get("train")
    val_dir = next((top[n] for n in VAL_DIR_NAMES if n in top), None)
    test_dir = top.get("test")
    seen: set[Path] = set()
    if train_dir is None and val_dir is None and test_dir is None:
        return _scan_unsplit(root, list(top.values()), seen, val_fraction=val_fraction, seed=seed)
    if train_dir is None:
        other = val_dir.name if val_dir is not None else "test"
        raise DataError(
            f"{root} has a {other}/ folder but no train/ folder. "
            "Add train/<class>/<images> next to it, or put the class folders directly in "
            f"{root} to have them split automatically."
        )
    if val_dir is None:
        raise DataError(
            f"{root} has train/ but no val/ folder (valid/ and validation/ also work). Add "
            f"val/<class>/<images>, or move the class folders from {train_dir} up into "
            f"{root} to have them split into train/val automatically."
        )
    train, ignored = _scan_split(train_dir, seen)
    scan = TreeScan(classes=sorted(train), ignored_files=ignored)
    if len(scan.classes) < 2:
        raise DataError(
            f"{train_dir} has {len(scan.classes)} class folder(s) "
            f"({', '.join(scan.classes) or 'none'}); a classifier needs at least two. "
            "Put each class's images in its own folder: train/<class>/<images>."
        )
    _check_not_empty(train, train_dir)
    to_idx = {c: i for i, c in enumerate(scan.classes)}
    scan.train = [(p, to_idx[c]) for c in scan.classes for p in train[c]]
    for split_dir, split in ((val_dir, "val"), (test_dir, "test")):
        if split_dir is None:
            continue
        found, ignored = _scan_split(split_dir, seen)
        scan.ignored_files += ignored
        unknown = sorted(set(found) - set(scan.classes))
        if unknown:
            raise DataError(
                f"{split_dir} has class folder(s) {', '.join(map(repr, unknown))} that "
                f"{train_dir} does not have. Train classes: {', '.join(scan.classes)}. "
                "Rename or remove them, or add training images for them."
            )
        missing = [c for c in scan.classes if not found.get(c)]
        if missing:
            logger.warning(
                "%s has no images for class(es) %s; their %s accuracy will be undefined.",
                split_dir,
                ", ".join(missing),
                split_dir.name,
            )
        setattr(scan, split, [(p, to_idx[c]) for c in scan.classes for p in found.get(c, [])])
    return scan


def stratified_split(
    found: dict[str, list[Path]], classes: list[str], *, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split each class's files into ``(train, val)`` samples, seeded and deterministic.

    Every class keeps at least one training image, and a class with a single image goes to
    train only. Within a split, samples are by class, then by path.
    """
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for idx, c in enumerate(classes):
        files = list(found[c])
        rng.shuffle(files)
        n = len(files)
        n_val = 0
        if n >= 2 and val_fraction > 0:
            n_val = min(n - 1, max(1, round(n * val_fraction)))
        val += [(p, idx) for p in sorted(files[:n_val])]
        train += [(p, idx) for p in sorted(files[n_val:])]
    return train, val


def _is_hidden(name: str) -> bool:
    # Covers .DS_Store, AppleDouble "._x.jpg", .ipynb_checkpoints, .git and macOS zip debris.
    return name.startswith(".") or name == "__MACOSX"


def _walk_images(folder: Path, seen: set[Path]) -> tuple[list[Path], list[Path]]:
    """Images (and ignored non-image files) anywhere under ``folder``, sorted.

    Follows symlinked folders, but each real folder only once (``seen`` holds resolved paths),
    so a link loop or two links to the same folder never count images twice.
    """
    images: list[Path] = []
    ignored: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = Path(dirpath).resolve()
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if _is_hidden(name):
                continue
            p = Path(dirpath) / name
            (images if p.suffix.lower() in IMG_EXTENSIONS else ignored).append(p)
    return sorted(images), ignored


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _scan_split(split_dir: Path, seen: set[Path]) -> tuple[dict[str, list[Path]], list[Path]]:
    """Images per class folder of ``split_dir``, and the non-image files found."""
    found: dict[str, list[Path]] = {}
    ignored_files: list[Path] = []
    for entry in sorted(split_dir.iterdir()):
        if _is_hidden(entry.name):
            continue
        if entry.is_dir():
            images, ignored = _walk_images(entry, seen)
            found[entry.name] = images
            ignored_files += ignored
        else:
            # A stray file next to the class folders has no class; report, don't guess.
            ignored_files.append(entry)
    return found, ignored_files


def _scan_unsplit(
    root: Path, class_dirs: list[Path], seen: set[Path], *, val_fraction: float, seed: int
) -> TreeScan:
    found: dict[str, list[Path]] = {}
    ignored_files: list[Path] = []
    for d in class_dirs:
        images, ignored = _walk_images(d, seen)
        found[d.name] = images
        ignored_files += ignored
    ignored_files += sorted(p for p in root.iterdir() if p.is_file() and not _is_hidden(p.name))
    classes = sorted(found)
    if len(classes) < 2:
        raise DataError(
            f"{root} has one class folder ({classes[0]}); a classifier needs at "
            "least two. Put each class's images in its own folder, or pass the folder "
            "above them."
        )
    _check_not_empty(found, root)
    train, val = stratified_split(found, classes, val_fraction=val_fraction, seed=seed)
    logger.info(
        "%s has no train/val folders: split %d images into %d train / %d val "
        "(val_fraction=%s, seed=%d).",
        root,
        sum(map(len, found.values())),
        len(train),
        len(val),
        val_fraction,
        seed,
    )
    return TreeScan(classes=classes, train=train, val=val, ignored_files=ignored_files)


def _check_not_empty(found: dict[str, list[Path]], where: Path) -> None:
    empty = [c for c in sorted(found) if not found[c]]
    if empty:
        raise DataError(
            f"Class folder(s) {', '.join(map(repr, empty))} in {where} hold no images "
            f"(looked for {', '.join(sorted(IMG_EXTENSIONS))}, any case, in subfolders "
            "too). Add images or remove the empty folder(s)."
        )
