"""Label files: a CSV or JSON Lines file of ``(image path, label[, split])`` rows, read into the
same table of samples as the tree scan (``TreeScan``), so everything downstream (checks, cache,
sampler, loaders, reports) is shared.

- CSV (``.csv``): a header row, then one row per image. The columns are named ``path`` and
  ``label`` (``image_key`` and ``label_key`` rename them) and an optional ``split``.
- JSON Lines (``.jsonl``): one JSON object per line, as labelling tools export them; the image
  path and the label are under ``image_key`` and ``label_key``, the split under ``split``.

Paths are relative to the label file's folder (absolute ones are taken as they are). A split is
``train``, ``val`` (``valid``, ``validation``) or ``test``; rows without one are split into
train/val per label, seeded and stratified, as a tree of class folders is. Classes are the
sorted labels of the training rows (those whose split is ``train`` or empty), as ImageFolder
sorts its class folders. A bad row is a ``DataError`` naming ``file:line`` and the fix; images
that do not exist are dropped and reported under the rules for unreadable images.

Example:
    >>> scan, missing = read_label_file(Path("labels.csv"), val_fraction=0.2, seed=0)
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.data.label_rows import (
    SPLIT_KEY,
    Row,
    check_has_val,
    drop_missing,
)
from trainer.data.label_sets import as_label_set, label_list, read_label_sets
from trainer.data.scan import NOT_REGULAR, Sample, TreeScan, stratified_split
from trainer.data.scan_cache import cached_scan
from trainer.errors import DataError

logger = logging.getLogger("trainer.data")

LABEL_FILE_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl")
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


TASKS: tuple[str, ...] = ("auto", "multiclass", "multilabel")


def is_label_file(path: Path) -> bool:
    """Whether ``path`` names a label file (by its suffix), existing or not."""
    return path.suffix.lower() in LABEL_FILE_SUFFIXES


def scan_source(
    root: Path,
    *,
    val_fraction: float,
    seed: int,
    image_key: str = "path",
    label_key: str = "label",
    max_bad_fraction: float = 0.05,
    cache_dir: Path | None = None,
    task: str = "auto",
    label_sep: str | None = None,
) -> tuple[TreeScan, list[tuple[Path, str]]]:
    """The samples of ``--data``: a label file, or else an ImageFolder tree (``scan_tree``,
    read from ``cache_dir`` while the tree is unchanged: ``trainer.data.scan_cache``).

    Returns:
        The scan, and ``(path, reason)`` for each image left out unread: a listed image that
        does not exist, or one that is not a regular file (a FIFO named ``x.jpg``).

    Raises:
        DataError: the source cannot be used; the message names the file (and line) and the fix.
    """
    if is_label_file(root):
        return read_label_file(
            root,
            val_fraction=val_fraction,
            seed=seed,
            image_key=image_key,
            label_key=label_key,
            max_bad_fraction=max_bad_fraction,
            task=task,
            label_sep=label_sep,
        )
    if root.is_file():
        raise DataError(
            f"Data path {root} is a file, but neither a folder nor a label file. Pass the folder "
            "that holds train/ and val/ (or one folder per class), or a label file ending in "
            f"{' or '.join(LABEL_FILE_SUFFIXES)}; archives must be extracted first."
        )
    if label_sep is not None:
        raise DataError(f"--label-sep splits a CSV label file's label column, but {root} is a "
                        "folder tree. Drop --label-sep, or pass a .csv label file with --data.")
    scan = cached_scan(root, val_fraction=val_fraction, seed=seed, cache_dir=cache_dir)
    if task == "multilabel":  # a tree as a multi-label set: each image carries its folder's label
        scan = dataclasses.replace(scan, label_sets=[(i,) for i in range(len(scan.classes))])
    return scan, [(p, NOT_REGULAR) for p in scan.not_regular]


def read_label_file(
    path: Path,
    *,
    val_fraction: float,
    seed: int,
    image_key: str = "path",
    label_key: str = "label",
    max_bad_fraction: float = 0.05,
    task: str = "auto",
    label_sep: str | None = None,
) -> tuple[TreeScan, list[tuple[Path, str]]]:
    """Read a CSV or JSONL label file into train/val/test samples.

    Args:
        path: the ``.csv`` or ``.jsonl`` file.
        val_fraction: share of each label held out for val among the rows without a split.
        seed: seeds that split.
        image_key: the column (CSV) or key (JSONL) holding the image path.
        label_key: the column or key holding the label.
        max_bad_fraction: largest share of rows whose image may be missing; they are dropped.
        task: "auto" (multi-label when a JSONL label is a list, or ``label_sep`` is given),
            "multiclass" or "multilabel" (``trainer.data.label_sets``).
        label_sep: splits a CSV label column into a label set (e.g. ";").

    Returns:
        The scan (classes, samples per split, by class then path), and ``(path, reason)`` for
        each image that does not exist, in file order. A multi-label scan's sample targets are
        indices into its ``label_sets``.

    Raises:
        DataError: the file is missing or unreadable, a row is malformed (``file:line`` named),
            a path is listed twice, there are fewer than two labels, a val/test label has no
            training row, or too many images are missing.
    """
    if not path.is_file():
        raise DataError(
            f"Label file {path} does not exist. Pass an existing .csv or .jsonl file with "
            "--data (paths in it are relative to its folder), or an ImageFolder tree."
        )
    is_csv = path.suffix.lower() == ".csv"
    if label_sep is not None and not is_csv:
        raise DataError(
            f"{path}:1: --label-sep splits a CSV label column, but this is a JSONL file, whose "
            'label sets are lists ({"path": "a.jpg", "label": ["cat", "dog"]}). Drop --label-sep.'
        )
    try:
        if is_csv:
            rows = list(_csv_rows(path, image_key, label_key, label_sep))
        else:
            rows = list(_jsonl_rows(path, image_key, label_key))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); save it as UTF-8.") from e
    except OSError as e:
        raise DataError(f"cannot read the label file {path} ({e.strerror or e}).") from e
    if not rows:
        raise DataError(f"Label file {path} has no rows. Add one row per image.")
    multilabel = task == "multilabel" or (
        task == "auto" and (label_sep is not None or any(r.labels is not None for r in rows))
    )
    if multilabel:
        rows = [as_label_set(r) for r in rows]
    elif (listed := next((r for r in rows if r.labels is not None), None)) is not None:
        raise DataError(
            f"{listed.where}: a list of labels, but --task multiclass takes one label per "
            "image. Pass --task multilabel (or auto), or give this row a single label."
        )
    stats = [_stat(r.path) for r in rows]
    _check_unique(rows, stats)
    if multilabel:
        return read_label_sets(path, rows, stats, val_fraction, seed, max_bad_fraction)
    train_labels = sorted({r.label for r in rows if r.split in (None, "train")})
    if len(train_labels) < 2:
        raise DataError(
            f"{path} has {len(train_labels)} label(s) among its training rows "
            f"({', '.join(map(repr, train_labels)) or 'none'}); a classifier needs at least two."
        )
    for r in rows:
        if r.label not in train_labels:
            raise DataError(
                f"{r.where}: label {r.label!r} has no training row ({r.split} only). Training "
                f"labels: {', '.join(train_labels)}. Fix the label, or add training rows for it."
            )
    kept, missing = drop_missing(path, rows, stats, max_bad_fraction)
    scan = _split(path, train_labels, kept, val_fraction=val_fraction, seed=seed)
    check_has_val(path, scan, rows)
    return scan, [(r.path, why) for r, why in missing]


def _csv_rows(
    path: Path, image_key: str, label_key: str, label_sep: str | None = None
) -> Iterator[Row]:
    # utf-8-sig: spreadsheet programs start their CSV exports with a byte-order mark.
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = [h.strip() for h in next(reader, [])]
            columns = {name: i for i, name in enumerate(header)}
            twice = sorted({h for h in header if header.count(h) > 1})
            if twice:
                raise DataError(
                    f"{path}:1: the header names column(s) {', '.join(map(repr, twice))} more "
                    "than once; which one holds the value would be a guess. Rename or remove "
                    "the repeated column(s)."
                )
            for key, flag in ((image_key, "--image-key"), (label_key, "--label-key")):
                if key not in columns:
                    raise DataError(
                        f"{path}:1: no column {key!r}; the header names "
                        f"{', '.join(map(repr, header)) or 'no columns'}. The first line must "
                        f"name the columns (e.g. path,label,split), or pass {flag} COLUMN."
                    )
            for fields in reader:
                where = f"{path}:{reader.line_num}"
                if not fields or fields == [""]:
                    continue  # a blank line
                if len(fields) != len(header):
                    raise DataError(
                        f"{where}: {len(fields)} field(s), the header has {len(header)}. "
                        "Quote values that hold commas, and give every row every column."
                    )
                values: dict[str, Any] = dict(zip(header, fields, strict=True))
                if label_sep is not None:  # a label set: "cat;dog", or "" for none
                    text = values[label_key]
                    values[label_key] = [t for t in text.split(label_sep) if t.strip()]
                yield _row(path, where, values, image_key, label_key)
        except csv.Error as e:
            raise DataError(
                f"{path}:{reader.line_num}: malformed CSV ({e}). Fix the quoting on that line."
            ) from e


def _jsonl_rows(path: Path, image_key: str, label_key: str) -> Iterator[Row]:
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            where = f"{path}:{n}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{where}: not valid JSON ({e.msg}, column {e.colno}). Each line must be "
                    'one JSON object, e.g. {"path": "a.jpg", "label": "cat"}.'
                ) from e
            except ValueError as e:  # e.g. an integer of more than 4300 digits
                raise DataError(
                    f"{where}: cannot be read as JSON ({e}). Write the value as text, or as a "
                    'number of ordinary size, e.g. {"path": "a.jpg", "label": "3"}.'
                ) from e
            if not isinstance(obj, dict):
                raise DataError(
                    f"{where}: a JSON {type(obj).__name__}, not an object. Each line must be "
                    'one JSON object, e.g. {"path": "a.jpg", "label": "cat"}.'
                )
            for key, flag in ((image_key, "--image-key"), (label_key, "--label-key")):
                if key not in obj:
                    raise DataError(
                        f"{where}: no key {key!r}; the object has "
                        f"{', '.join(map(repr, obj)) or 'no keys'}. Pass {flag} with the key "
                        "that holds it."
                    )
            yield _row(path, where, obj, image_key, label_key)


def _row(path: Path, where: str, values: dict[str, Any], image_key: str, label_key: str) -> Row:
    image, label, split = values[image_key], values[label_key], values.get(SPLIT_KEY)
    if not isinstance(image, str) or not image.strip():
        raise DataError(f"{where}: empty or non-text image path {image!r}. Give the image's path.")
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)  # numeric class ids, as some tools export them
    labels = None
    if isinstance(label, list):  # a multi-label row (trainer.data.label_sets)
        labels = tuple(label_list(where, label))
        label = ";".join(labels) or "(none)"
    if not isinstance(label, str):
        raise DataError(
            f"{where}: label {label!r} is a {type(label).__name__}, not text. Give one label "
            'as text, or a list of labels for a multi-label set (["cat", "outdoor"]).'
        )
    if not label.strip():
        raise DataError(f"{where}: empty label for {image.strip()}. Label it, or remove the row.")
    if split is None or (isinstance(split, str) and not split.strip()):
        name = None
    elif isinstance(split, str) and split.strip().lower() in _SPLITS:
        name = _SPLITS[split.strip().lower()]
    else:
        raise DataError(
            f"{where}: unknown split {split!r}. Use train, val (valid, validation) or test, or "
            "leave it empty to have the row split automatically."
        )
    file = Path(image.strip())
    file = file if file.is_absolute() else path.parent / file
    return Row(file, label.strip(), name, where, labels)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None


def _check_unique(rows: list[Row], stats: list[os.stat_result | None]) -> None:
    """Refuse an image listed twice, under any two names: an existing file is known by its
    device and inode (``a/../a/x.png``, a symlink or a hard link to ``a/x.png`` are the same
    file), a missing one by its normalised absolute path."""
    first: dict[object, Row] = {}
    for r, st in zip(rows, stats, strict=True):
        key = (st.st_dev, st.st_ino) if st is not None else os.path.normpath(os.path.abspath(r.path))
        seen = first.setdefault(key, r)
        if seen is not r:
            alias = "" if seen.path == r.path else f" as {seen.path}"
            raise DataError(
                f"{r.where}: {r.path} is listed again (first at {seen.where}{alias}). List "
                "each image once."
            )


def _split(
    path: Path, classes: list[str], rows: list[Row], *, val_fraction: float, seed: int
) -> TreeScan:
    """Rows with a split keep it; the rest are split per label, seeded and stratified."""
    to_idx = {c: i for i, c in enumerate(classes)}
    fixed: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    pool: dict[str, list[Path]] = {c: [] for c in classes}
    for r in rows:
        if r.split is None:
            pool[r.label].append(r.path)
        else:
            fixed[r.split].append((r.path, to_idx[r.label]))
    split_train, split_val = stratified_split(pool, classes, val_fraction=val_fraction, seed=seed)
    train = [(Path(p), t) for p, t in split_train]  # Paths in, Paths out
    val = [(Path(p), t) for p, t in split_val]
    if any(pool.values()):
        logger.info(
            "%s: split %d row(s) without a split into %d train / %d val "
            "(val_fraction=%s, seed=%d).",
            path, sum(map(len, pool.values())), len(train), len(val), val_fraction, seed,
        )  # fmt: skip

    def ordered(samples: list[Sample]) -> list[Sample]:
        return sorted(samples, key=lambda s: (s[1], s[0]))  # by class, then path, as a tree

    return TreeScan(
        classes=classes,
        train=ordered(train + fixed["train"]),
        val=ordered(val + fixed["val"]),
        test=ordered(fixed["test"]),
    )
