"""Multi-label data: an image carries a set of labels (possibly none) instead of one.

A label file makes the task multi-label when a JSONL label is a list
(``{"path": "a.jpg", "label": ["cat", "outdoor"]}``), when ``--label-sep`` splits a CSV label
column (``cat;outdoor``), or with ``--task multilabel``. The classes are the sorted union of
the training rows' labels.

The rest of the data path (checks, caches, the sampler, the loaders) keeps moving one integer
per sample: here it is the index of the sample's label set in ``TreeScan.label_sets``, and the
dataset turns it into the multi-hot float row ``(C,)`` the loss and the metrics take
(``label_table``), so a batch's targets are ``(B, C)`` floats.

- Rows without a split are split per *rarest label* (the label of the row that the fewest
  training rows carry; a row without labels is a stratum of its own), seeded, as single-label
  rows are split per label.
- The ``balanced`` sampler weights an image by the inverse frequency of its rarest label
  (``LabelSetSampler``), and records its draws per class: each drawn image counts once for
  each of its labels.
- Multi-label data is seen whole by default (``TASK_DATA_DEFAULTS``): ``ImageFolderData``
  uses them for the settings its caller left unset.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.label_rows import Row, check_has_val, drop_missing
from trainer.data.sampler import TrackingWeightedRandomSampler
from trainer.data.scan import Sample, TreeScan, stratified_split
from trainer.errors import ConfigError, DataError

logger = logging.getLogger("trainer.data")

# Multi-label data's defaults: the whole image, in training (crop scale 1: only the aspect
# ratio is jittered) and in validation (val_resize "squash": no centre crop). A crop cuts
# labelled objects out while their labels stay: on the digit mosaics of
# tools/benchmarks/multilabel_bench.py the generic 0.08 reached val mAP 0.39 after 2 epochs,
# crops of 0.766 and more with validation's centre crop 0.923 after 6, whole images 0.970
# (a bare loop on whole images: 0.989).
MULTILABEL_CROP_SCALE = 1.0
MULTILABEL_VAL_RESIZE = "squash"
# Each task's values of the data settings left unset (None); an explicit value always wins.
TASK_DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "multiclass": {"crop_scale": 0.08, "val_resize": "crop"},
    "multilabel": {"crop_scale": MULTILABEL_CROP_SCALE, "val_resize": MULTILABEL_VAL_RESIZE},
}

# The stratum of the rows that carry no label (no class is named so: names are stripped).
NO_LABEL = " none"


def label_list(where: str, value: list[Any]) -> list[str]:
    """A row's label list, checked: text only, each label once (a repeat is warned about and
    dropped), in the order given. ``where`` is the row's ``file:line``."""
    out: list[str] = []
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)  # numeric class ids, as for single labels
        if not isinstance(item, str) or not item.strip():
            raise DataError(
                f"{where}: the label list holds {item!r}, which is not a label (labels are "
                'non-empty text, e.g. ["cat", "outdoor"]). Fix or remove that entry.'
            )
        if item.strip() in out:
            logger.warning("%s: label %r is listed twice in the row; using it once.", where,
                           item.strip())  # fmt: skip
            continue
        out.append(item.strip())
    return out


def as_label_set(row: Row) -> Row:
    """The row as a multi-label row: a single label becomes a set of one."""
    if row.labels is not None:
        return row
    return dataclasses.replace(row, labels=(row.label,))


def read_label_sets(
    path: Path,
    rows: list[Row],
    stats: list[os.stat_result | None],
    val_fraction: float,
    seed: int,
    max_bad_fraction: float,
) -> tuple[TreeScan, list[tuple[Path, str]]]:
    """``read_label_file`` for multi-label rows (every ``row.labels`` set)."""

    classes = sorted({lab for r in rows if r.split in (None, "train") for lab in r.labels or ()})
    if not classes:
        raise DataError(f"{path}: no training row carries a label. Label some images.")
    for r in rows:
        unknown = [lab for lab in r.labels or () if lab not in classes]
        if unknown:
            raise DataError(
                f"{r.where}: label {unknown[0]!r} has no training row ({r.split} only). "
                f"Training labels: {', '.join(classes)}. Fix the label, or add training rows "
                "for it."
            )
    kept, missing = drop_missing(path, rows, stats, max_bad_fraction)
    to_idx = {c: i for i, c in enumerate(classes)}
    sets = sorted({tuple(sorted(to_idx[lab] for lab in r.labels or ())) for r in kept})
    set_id = {s: i for i, s in enumerate(sets)}
    target = {r.path: set_id[tuple(sorted(to_idx[lab] for lab in r.labels or ()))] for r in kept}
    # Rows without a split: stratified by their rarest label (counted over the training rows).
    counts = Counter(lab for r in rows if r.split in (None, "train") for lab in r.labels or ())
    pool: dict[str, list[Path]] = {}
    for r in kept:
        if r.split is None:
            rarest = min(r.labels or (), key=lambda lab: (counts[lab], lab), default=NO_LABEL)
            pool.setdefault(rarest, []).append(r.path)
    strata = sorted(pool)
    split_train, split_val = stratified_split(pool, strata, val_fraction=val_fraction, seed=seed)
    fixed: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for r in kept:
        if r.split is not None:
            fixed[r.split].append((r.path, target[r.path]))

    def ordered(samples: list[Sample]) -> list[Sample]:
        return sorted(samples, key=lambda s: (s[1], s[0]))  # by label set, then path

    scan = TreeScan(
        classes=classes,
        train=ordered([(Path(p), target[Path(p)]) for p, _ in split_train] + fixed["train"]),
        val=ordered([(Path(p), target[Path(p)]) for p, _ in split_val] + fixed["val"]),
        test=ordered(fixed["test"]),
        label_sets=sets,
    )
    check_has_val(path, scan, rows)
    return scan, [(r.path, why) for r, why in missing]


def label_table_of(scan: TreeScan, decode: str = "cpu") -> tuple[torch.Tensor | None, str]:
    """A scan's ``label_table`` (None for a single-label scan) and its task, "multiclass" or
    "multilabel"."""
    if scan.label_sets is None:
        return None, "multiclass"
    if decode == "gpu":
        raise ConfigError(
            "--decode gpu serves single-label batches only; this data is multi-label. Drop "
            "--decode gpu (the images then decode in the loader workers)."
        )
    return label_table(scan.label_sets, len(scan.classes)), "multilabel"


def tracking_sampler(
    targets: np.ndarray, num_classes: int, table: torch.Tensor | None, **kwargs: Any
) -> TrackingWeightedRandomSampler:
    """The training sampler: ``TrackingWeightedRandomSampler`` over the class indices, or for
    multi-label data (``table`` given) a ``LabelSetSampler`` over the label vectors."""
    if table is None:
        return TrackingWeightedRandomSampler(targets.tolist(), num_classes, **kwargs)
    return LabelSetSampler(table[torch.as_tensor(targets)], **kwargs)


def multilabel_mapping(num_classes: int) -> dict[str, Any]:
    """What ``labels_mapping.json`` adds for multi-label data: the task, the activation and
    the per-class thresholds (0.5 until validation tunes them)."""
    return {"task": "multilabel", "activation": "sigmoid", "thresholds": [0.5] * num_classes}


def label_table(label_sets: Sequence[tuple[int, ...]], num_classes: int) -> torch.Tensor:
    """``(K, C)`` float32: row k is the multi-hot vector of label set k."""
    table = torch.zeros(len(label_sets), num_classes)
    for k, labels in enumerate(label_sets):
        table[k, list(labels)] = 1.0
    return table


def label_counts(targets: np.ndarray, table: torch.Tensor) -> list[int]:
    """Images carrying each class, for samples whose targets index ``table``'s rows."""
    if not len(targets):
        return [0] * table.shape[1]
    return [int(n) for n in table[torch.as_tensor(targets)].sum(0).tolist()]


def labels_per_image(targets: np.ndarray, table: torch.Tensor) -> dict[int, int]:
    """How many images carry 0, 1, 2, ... labels."""
    sizes = table.sum(1).long()[torch.as_tensor(targets, dtype=torch.int64)]
    values, counts = np.unique(sizes.numpy(), return_counts=True)
    return {int(k): int(v) for k, v in zip(values, counts, strict=True)}


def rarest_labels(multi_hot: torch.Tensor) -> torch.Tensor:
    """Each image's rarest label (by count over ``multi_hot``'s rows; ties: the lower index);
    ``C`` for an image with none."""
    counts = multi_hot.sum(0)
    n, c = multi_hot.shape
    cost = torch.where(multi_hot > 0, counts, torch.full((n, c), float("inf")))
    rarest = cost.argmin(1)
    return torch.where(multi_hot.sum(1) > 0, rarest, torch.full_like(rarest, c))


class LabelSetSampler(TrackingWeightedRandomSampler):
    """The tracking sampler for multi-label images: an image's class is its rarest label
    (images without labels form one more group), so ``balanced`` weights it by the inverse
    frequency of that label; ``class_counts`` and ``expected_counts`` count labels (an image
    counts once per label it carries), one entry per class.

    Args:
        multi_hot: ``(N, C)`` the training images' label vectors.
        mode, class_weights, seed, num_replicas, rank: as ``TrackingWeightedRandomSampler``'s.

    Example:
        >>> s = LabelSetSampler(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), mode="balanced")
        >>> len(list(s)), len(s.class_counts)
        (3, 2)
    """

    def __init__(
        self,
        multi_hot: torch.Tensor,
        *,
        mode: str = "balanced",
        class_weights: dict[int, float] | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        c = multi_hot.shape[1]
        super().__init__(rarest_labels(multi_hot).tolist(), c + 1, mode=mode,
                         class_weights=class_weights, seed=seed, num_replicas=num_replicas,
                         rank=rank)  # fmt: skip
        self.multi_hot = multi_hot.double()
        per_label = self.weights @ self.multi_hot
        self._class_share = (per_label / self.weights.sum()).tolist()
        self.class_counts = [0] * c
        self.expected_counts = [s * len(self) for s in self._class_share]

    def __iter__(self) -> Iterator[int]:
        indices = super().__iter__()
        self.class_counts = [int(n) for n in self.multi_hot[self.last_indices].sum(0).tolist()]
        return indices
