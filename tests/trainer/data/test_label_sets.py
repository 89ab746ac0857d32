"""Multi-label label files: list labels (JSONL), --label-sep (CSV), --task, empty label sets,
the split by rarest label, the balanced sampler by rarest label, and the bad rows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from tests.trainer.data.test_labelfile import write_labels
from trainer.data.label_sets import LabelSetSampler, rarest_labels
from trainer.data.labelfile import read_label_file
from trainer.errors import DataError


def _images(root: Path, n: int) -> list[str]:
    tree = make_tree(root / "tree", counts={"x": n}, splits=(), size=(16, 16))
    return [str(p.relative_to(root)) for p in sorted(tree.rglob("*.*"), key=lambda p: int(p.stem))]


def _rows(root: Path) -> list[dict[str, object]]:
    """12 images: cat on 0-7, dog on 4-11, bird on 10-11 (rarest), image 3 with none."""
    paths = _images(root, 12)
    rows = []
    for i, p in enumerate(paths):
        labels = [lab for lab, on in (("cat", i < 8 and i != 3), ("dog", i >= 4),
                                      ("bird", i >= 10)) if on]  # fmt: skip
        rows.append({"path": p, "label": labels})
    return rows


def test_jsonl_lists_make_a_multilabel_set_with_multi_hot_targets(tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "labels.jsonl", _rows(tmp_path))
    data = small_data(labels, val_fraction=0.25)
    assert data.task == "multilabel" and data.classes == ["bird", "cat", "dog"]
    samples = list(data.train_samples) + list(data.val_samples)
    assert len(samples) == 12
    # Each split holds a bird image: stratified by the rarest label.
    table = data.label_table
    assert table is not None
    assert table[data.val_samples.targets][:, 0].sum() == 1
    assert table[data.train_samples.targets][:, 0].sum() == 1
    images, targets = next(iter(data.val_loader()))
    assert targets.dtype == torch.float32 and targets.shape == (len(images), 3)
    by_name = {Path(p).stem: table[t].tolist() for p, t in samples}
    assert by_name["3"] == [0.0, 0.0, 0.0]  # an empty label set is allowed
    assert by_name["10"] == [1.0, 0.0, 1.0]
    assert sum(data.class_counts["train"]) + sum(data.class_counts["val"]) == 2 + 7 + 8
    mapping = data.labels_mapping()
    assert mapping["task"] == "multilabel" and mapping["activation"] == "sigmoid"


def test_csv_label_sep_and_task_multilabel(tmp_path: Path) -> None:
    rows = [{"path": r["path"], "label": ";".join(r["label"])} for r in _rows(tmp_path)]  # type: ignore[arg-type]
    csv_file = write_labels(tmp_path / "labels.csv", rows)
    scan, _ = read_label_file(csv_file, val_fraction=0.25, seed=0, label_sep=";")
    assert scan.classes == ["bird", "cat", "dog"] and scan.label_sets is not None
    assert () in scan.label_sets and (0, 1, 2) not in scan.label_sets
    single = write_labels(tmp_path / "single.csv", [{"path": r["path"], "label": "cat" if i % 2
                                                     else "dog"} for i, r in enumerate(rows)])  # fmt: skip
    plain, _ = read_label_file(single, val_fraction=0.25, seed=0)
    assert plain.label_sets is None  # auto: single labels stay multiclass
    forced, _ = read_label_file(single, val_fraction=0.25, seed=0, task="multilabel")
    assert forced.label_sets == [(0,), (1,)]


def test_tree_as_multilabel(tmp_path: Path) -> None:
    data = small_data(make_tree(tmp_path / "t"), task="multilabel")
    assert data.task == "multilabel"
    _, targets = next(iter(data.val_loader()))
    assert targets.sum(1).tolist() == [1.0] * len(targets)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("non_string", r"labels\.jsonl:2: the label list holds 3\.5"),
        ("multiclass", r"labels\.jsonl:1: a list of labels, but --task multiclass"),
        ("sep_on_jsonl", r"labels\.jsonl:1: --label-sep splits a CSV"),
    ],
)
def test_bad_multilabel_rows(tmp_path: Path, case: str, expect: str) -> None:
    rows = _rows(tmp_path)
    if case == "non_string":
        rows[1]["label"] = ["cat", 3.5]
    labels = write_labels(tmp_path / "labels.jsonl", rows)
    kwargs = {"multiclass": {"task": "multiclass"}, "sep_on_jsonl": {"label_sep": ";"}}.get(case, {})
    with pytest.raises(DataError, match=expect):
        read_label_file(labels, val_fraction=0.25, seed=0, **kwargs)  # type: ignore[arg-type]


def test_integer_labels_in_a_list_are_read_as_their_text() -> None:
    from trainer.data.label_sets import label_list

    assert label_list("labels.jsonl:1", ["red", 3]) == ["red", "3"]  # as docs/data.md says
    for bad in (True, 1.5, {"a": 1}, " "):
        with pytest.raises(DataError, match="labels.jsonl:1: the label list holds"):
            label_list("labels.jsonl:1", ["red", bad])


def test_duplicate_labels_in_a_row_warn_and_count_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _rows(tmp_path)
    rows[0]["label"] = ["cat", "cat"]
    labels = write_labels(tmp_path / "labels.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        scan, _ = read_label_file(labels, val_fraction=0.25, seed=0)
    assert "labels.jsonl:1: label 'cat' is listed twice" in caplog.text
    assert scan.label_sets is not None and all(len(set(s)) == len(s) for s in scan.label_sets)


def test_balanced_sampler_weights_by_rarest_label_and_counts_labels() -> None:
    # 8 images with label 0 only, 2 with labels 0 and 1, 2 with none.
    multi_hot = torch.tensor([[1.0, 0.0]] * 8 + [[1.0, 1.0]] * 2 + [[0.0, 0.0]] * 2)
    assert rarest_labels(multi_hot).tolist() == [0] * 8 + [1] * 2 + [2] * 2
    sampler = LabelSetSampler(multi_hot, mode="balanced", seed=0)
    sampler.num_samples = 3000
    drawn = torch.tensor(list(sampler))
    groups = rarest_labels(multi_hot)[drawn].bincount(minlength=3).float() / len(drawn)
    assert torch.allclose(groups, torch.full((3,), 1 / 3), atol=0.05)  # each group a third
    assert sampler.class_counts == multi_hot[drawn].sum(0).long().tolist()
    assert len(sampler.expected_counts) == 2


def test_the_summary_counts_images_and_labels_apart(tmp_path: Path) -> None:
    from tests.tools.test_multilabel_cli import write_multilabel_set

    data = small_data(write_multilabel_set(tmp_path / "ml", n_train=8, n_val=8))
    text = data.summary()  # 8 images a split, every label set once: 12 labels, 4 of each
    assert "train: 8 images, 12 labels, per label min 4 max 4" in text, text
    assert "val: 8 images, 12 labels" in text
