"""The tree scan: an ImageFolder tree to lists of ``(path, class index)`` samples per split.

Plain functions returning plain data; ``ImageFolderData`` calls ``scan_tree`` and takes it from
there (verification, cache, sampler, loaders).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.data.decode import IMG_EXTENSIONS
from trainer.data.samples import SampleArray
from trainer.errors import DataError

logger = logging.getLogger("trainer.data")

VAL_DIR_NAMES: tuple[str, ...] = ("val", "valid", "validation")
# Why a file named as an image is left out without being opened (opening a FIFO blocks).
NOT_REGULAR = "not a regular file (a FIFO, socket, device or broken link): skipped unopened"

Sample = tuple[Path, int]
AnyPath = str | os.PathLike[str]


@dataclass
class TreeScan:
    """What ``scan_tree`` found.

    Attributes:
        classes: the class names, sorted; a class's index is its position here.
        train: the training samples, by class, then by path.
        val: the validation samples, in the same order.
        test: the test samples (empty when the tree has no test/ folder).
        ignored_files: non-image files found, in scan order (hidden entries are not listed).
        skipped_links: symlinked folders not followed, with why: a loop back up the tree, or
            a way into another class's folder (following it would take that class's images).
        not_regular: files with an image's name that are not regular files (a FIFO, a
            socket, a device, a broken link): left out of the samples, never opened.
        folders: every folder whose listing the scan read.
        listings: ``listing_digest`` of each of ``folders`` as the scan read it: a stored
            scan stands while every folder still lists the same (``trainer.data.scan_cache``).
        label_sets: for a multi-label scan, the distinct label sets (tuples of class
            indices) that the samples' targets index (``trainer.data.label_sets``); else None.
    """

    classes: list[str]
    train: Sequence[Sample] = field(default_factory=list)
    val: Sequence[Sample] = field(default_factory=list)
    test: Sequence[Sample] = field(default_factory=list)
    ignored_files: list[Path] = field(default_factory=list)
    skipped_links: list[tuple[Path, str]] = field(default_factory=list)
    not_regular: list[Path] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    listings: list[str] = field(default_factory=list)
    label_sets: list[tuple[int, ...]] | None = None


# A folder's entries as the scan reads them: (name, kind), sorted by name. The kind is "d" a
# folder (links followed), "f" a regular file, "o" anything else; "l" plus the link's target
# is prefixed for a symlink, whose target decides what the scan follows.
Entry = tuple[str, str]


def read_folder(folder: str) -> list[Entry]:
    """The entries of ``folder`` (see ``Entry``): one ``scandir``, and no ``stat`` for an
    entry that is not a symlink.

    Raises:
        OSError: the folder cannot be listed.
    """
    entries = []
    with os.scandir(folder) as it:
        for e in it:
            kind = "d" if e.is_dir() else "f" if e.is_file() else "o"
            if e.is_symlink():
                kind = f"l{os.readlink(e.path)}\0{kind}"
            entries.append((e.name, kind))
    entries.sort()
    return entries


def listing_digest(entries: Sequence[Entry]) -> str:
    """A digest of ``read_folder``'s entries: equal digests, equal listings."""
    text = "\0".join(f"{kind}\0{name}" for name, kind in entries)
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()


@dataclass
class _Walk:
    """State shared by the walks of one scan: real folders entered, every class folder's real
    path (over all splits), the links not followed and the folders read."""

    class_dirs: set[Path] = field(default_factory=set)
    seen: set[Path] = field(default_factory=set)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    not_regular: list[Path] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    listings: list[str] = field(default_factory=list)

    def read(self, folder: str | Path) -> list[Entry]:
        """``read_folder(folder)`` without hidden entries, recorded in ``folders``."""
        entries = read_folder(str(folder))
        self.folders.append(str(folder))
        self.listings.append(listing_digest(entries))
        return [(name, kind) for name, kind in entries if not _is_hidden(name)]

    def finish(self, scan: TreeScan) -> TreeScan:
        """``scan`` with what the walks recorded."""
        scan.skipped_links, scan.not_regular = self.skipped, self.not_regular
        scan.folders, scan.listings = self.folders, self.listings
        return scan

    def link_problem(self, target: Path, here: Path, own: Path) -> str | None:
        """Why a symlinked folder resolving to ``target`` must not be followed, else None."""
        if target == here or target in here.parents:
            return f"a loop: it points back up to {target}"
        for other in self.class_dirs - {own}:
            if target == other or target in other.parents or other in target.parents:
                return f"it leads into {other}, another class's folder"
        return None


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
            f"Data folder {root} does not exist. Check the path: pass the folder that holds "
            "train/ and val/ (or one folder per class) with --data."
        )
    if not root.is_dir():
        raise DataError(
            f"Data path {root} is a file, not a folder. Pass the folder that holds train/ "
            "and val/ (or one folder per class); archives must be extracted first."
        )
    walk = _Walk()
    root_entries = walk.read(root)
    top = {p.name: p for p in _subdirs(root, root_entries)}
    if not top:
        raise DataError(
            f"Data folder {root} holds no folders. Expected train/<class>/<images> and "
            "val/<class>/<images>, or one folder of images per class."
        )
    train_dir = top.get("train")
    val_dir = next((top[n] for n in VAL_DIR_NAMES if n in top), None)
    test_dir = top.get("test")
    if train_dir is None and val_dir is None and test_dir is None:
        walk.class_dirs = {d.resolve() for d in top.values()}
        strays = [root / name for name, kind in root_entries if not kind.endswith("d")]
        scan = _scan_unsplit(root, list(top.values()), strays, walk, val_fraction=val_fraction,
                             seed=seed)  # fmt: skip
        return walk.finish(scan)
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
    splits = {s: walk.read(s) for s in (train_dir, val_dir, test_dir) if s is not None}
    walk.class_dirs = {d.resolve() for s, entries in splits.items() for d in _subdirs(s, entries)}
    train, ignored = _scan_split(train_dir, splits[train_dir], walk)
    scan = TreeScan(classes=sorted(train), ignored_files=ignored)
    if len(scan.classes) < 2:
        raise DataError(
            f"{train_dir} has {len(scan.classes)} class folder(s) "
            f"({', '.join(scan.classes) or 'none'}); a classifier needs at least two. "
            "Put each class's images in its own folder: train/<class>/<images>."
        )
    _check_not_empty(train, train_dir)
    to_idx = {c: i for i, c in enumerate(scan.classes)}
    scan.train = SampleArray([(p, to_idx[c]) for c in scan.classes for p in train[c]])
    for split_dir, split in ((val_dir, "val"), (test_dir, "test")):
        if split_dir is None:
            continue
        found, ignored = _scan_split(split_dir, splits[split_dir], walk)
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
        samples = [(p, to_idx[c]) for c in scan.classes for p in found.get(c, [])]
        setattr(scan, split, SampleArray(samples))
    return walk.finish(scan)


def has_split_folders(root: Path) -> bool:
    """Whether ``root`` holds ``train/``, ``val/`` (or an alias) or ``test/``; False for a tree
    of class folders, which ``scan_tree`` splits with a seed and a fraction."""
    names = {p.name for p in _subdirs(root, _Walk().read(root))} if root.is_dir() else set()
    return bool(names & {"train", "test", *VAL_DIR_NAMES})


def stratified_split(
    found: Mapping[str, Sequence[AnyPath]], classes: list[str], *, val_fraction: float, seed: int
) -> tuple[list[tuple[AnyPath, int]], list[tuple[AnyPath, int]]]:
    """Split each class's files into ``(train, val)`` samples, seeded and deterministic.

    Every class keeps at least one training image, and a class with a single image goes to
    train only. Within a split, samples are by class, then by path.
    """
    rng = random.Random(seed)
    train: list[tuple[AnyPath, int]] = []
    val: list[tuple[AnyPath, int]] = []
    for idx, c in enumerate(classes):
        files = list(found[c])
        rng.shuffle(files)
        n = len(files)
        n_val = 0
        if n >= 2 and val_fraction > 0:
            n_val = min(n - 1, max(1, round(n * val_fraction)))
        val += [(p, idx) for p in sorted(files[:n_val], key=path_order)]
        train += [(p, idx) for p in sorted(files[n_val:], key=path_order)]
    return train, val


def path_order(path: AnyPath) -> Any:
    """Sorts paths as ``pathlib.Path`` does (component by component), strings too."""
    return os.fspath(path).split(os.sep) if os.name == "posix" else Path(path)


def _is_hidden(name: str) -> bool:
    # Covers .DS_Store, AppleDouble "._x.jpg", .ipynb_checkpoints, .git and macOS zip debris.
    return name.startswith(".") or name == "__MACOSX"


def _walk_images(folder: Path, walk: _Walk) -> tuple[list[str], list[Path]]:
    """Images (as strings) and ignored non-image files anywhere under ``folder``, sorted.

    Follows symlinked folders, but each real folder only once (``walk.seen`` holds resolved
    paths), so two links to the same folder never count images twice. A link back up the tree
    or into another class's folder is not followed, and is recorded in ``walk.skipped``: it
    would loop, or hand this class another class's images (and leave that class without).
    A file with an image's name that is not a regular file goes to ``walk.not_regular``.
    """
    images: list[str] = []
    ignored: list[Path] = []
    own = folder.resolve()
    todo = [(str(folder), own)]
    walked = 0
    while todo:
        dirpath, real = todo.pop()
        if real in walk.seen:
            continue
        walk.seen.add(real)
        walked += 1
        here = Path(dirpath)
        subdirs = []
        # Per file only string work, no Path: on a 1.28 M-image tree this loop is the scan.
        for name, kind in walk.read(dirpath):
            if kind.endswith("d"):
                link = here / name
                target = link.resolve() if kind.startswith("l") else None
                problem = None if target is None else walk.link_problem(target, real, own)
                if problem is not None:
                    walk.skipped.append((link, problem))
                    logger.warning("Not following the symlink %s: %s.", link, problem)
                else:
                    subdirs.append((os.path.join(dirpath, name), target or real / name))
            elif os.path.splitext(name)[1].lower() not in IMG_EXTENSIONS:
                ignored.append(here / name)
            elif kind.endswith("f"):
                images.append(os.path.join(dirpath, name))
            else:
                walk.not_regular.append(here / name)
        todo += reversed(subdirs)  # depth first, in name order
    # One folder's files are already in order; only images from subfolders need the sort.
    return (images if walked == 1 else sorted(images, key=path_order)), ignored


def _subdirs(folder: Path, entries: Sequence[Entry]) -> list[Path]:
    return [folder / name for name, kind in entries if kind.endswith("d")]


def _scan_split(
    split_dir: Path, entries: Sequence[Entry], walk: _Walk
) -> tuple[dict[str, list[str]], list[Path]]:
    """Images per class folder of ``split_dir``, and the non-image files found."""
    found: dict[str, list[str]] = {}
    ignored_files: list[Path] = []
    for name, kind in entries:
        entry = split_dir / name
        if kind.endswith("d"):
            images, ignored = _walk_images(entry, walk)
            found[name] = images
            ignored_files += ignored
        else:
            # A stray file next to the class folders has no class; report, don't guess.
            ignored_files.append(entry)
    return found, ignored_files


def _scan_unsplit(
    root: Path,
    class_dirs: list[Path],
    strays: list[Path],
    walk: _Walk,
    *,
    val_fraction: float,
    seed: int,
) -> TreeScan:
    found: dict[str, list[str]] = {}
    ignored_files: list[Path] = []
    for d in class_dirs:
        images, ignored = _walk_images(d, walk)
        found[d.name] = images
        ignored_files += ignored
    ignored_files += strays
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
    return TreeScan(classes=classes, train=SampleArray(train), val=SampleArray(val),
                    ignored_files=ignored_files)  # fmt: skip


def _check_not_empty(found: Mapping[str, Sequence[AnyPath]], where: Path) -> None:
    empty = [c for c in sorted(found) if not found[c]]
    if empty:
        raise DataError(
            f"Class folder(s) {', '.join(map(repr, empty))} in {where} hold no images "
            f"(looked for {', '.join(sorted(IMG_EXTENSIONS))}, any case, in subfolders "
            "too). Add images or remove the empty folder(s)."
        )
