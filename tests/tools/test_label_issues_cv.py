"""tools/label_issues.py: K-fold out-of-fold probabilities and confident learning."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hooks.label_issues import HEADER
from tests.conftest import make_tree
from tools import label_issues as tool
from trainer.config import TrainConfig


def noisy(n: int = 300, classes: int = 3, flipped: int = 12, seed: int = 0):  # type: ignore[no-untyped-def]
    """Labels with ``flipped`` of them moved to the next class, and probabilities that know
    the true class (with noise): the flipped ones are the issues to find."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, n)
    probs = rng.dirichlet(np.ones(classes), n) * 0.5
    probs[np.arange(n), true] += 0.5
    labels = true.copy()
    moved = rng.choice(n, flipped, replace=False)
    labels[moved] = (labels[moved] + 1) % classes
    return labels, probs, moved


def test_confident_learning_flags_the_moved_labels() -> None:
    labels, probs, moved = noisy()
    found = set(np.flatnonzero(tool.find_label_issues(labels, probs)).tolist())
    assert found <= set(moved.tolist()) and len(found) >= 10  # of 12
    # The confident joint's rows hold the given labels' counts; off the diagonal, an estimate
    # of the moves.
    joint = tool.confident_joint(labels, probs)
    np.testing.assert_allclose(joint.sum(1), np.bincount(labels))
    assert abs(joint.sum() - np.trace(joint) - len(moved)) <= 3


def test_same_issues_as_cleanlab() -> None:
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    labels, probs, _ = noisy(n=400, classes=4, flipped=30, seed=1)
    theirs = cleanlab_filter.find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
    assert (tool.find_label_issues(labels, probs) == theirs).all()


def test_folds_keep_every_class_in_training() -> None:
    labels = np.array([0] * 7 + [1] * 2 + [2])  # a class of 2, and one of a single image
    fold = tool.fold_of(labels, 3, seed=0)
    assert fold[labels == 2].tolist() == [-1]  # never held out
    for k in range(3):
        assert set(labels[(fold != k)].tolist()) == {0, 1, 2}
    assert sorted(np.bincount(fold[fold >= 0])) == [3, 3, 3]


def write_run(tmp_path: Path, data: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    args = {**TrainConfig().to_dict(), "data": str(data), "model": "small_cnn", "img_size": 16,
            "batch_size": 8, "epochs": 1, "workers": 0, "device": "cpu", "lr": 3e-3}  # fmt: skip
    (run / "args.json").write_text(json.dumps(args), encoding="utf-8")
    return run


def test_writes_every_training_image_ranked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_tree(tmp_path / "tree")
    run = write_run(tmp_path, root)
    assert tool.main([str(run), "--folds", "2"]) == 0
    with open(run / tool.CSV_NAME, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADER
    train = sorted(str(p) for p in (root / "train").rglob("*.*"))
    assert sorted(r[0] for r in rows[1:]) == train
    scores = [float(r[3]) for r in rows[1:]]
    flagged = int(capsys.readouterr().out.split()[0])
    assert scores[flagged:] == sorted(scores[flagged:]) and all(-1 <= s <= 1 for s in scores)


@pytest.mark.parametrize("case", ["one_fold", "no_args", "no_train_split", "multilabel"])
def test_bad_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    if case == "multilabel":  # label sets: confident learning ranks single labels only
        from tests.tools.test_multilabel_cli import write_multilabel_set

        run = write_run(tmp_path, write_multilabel_set(tmp_path / "ml", n_train=12, n_val=6))
    elif case == "no_train_split":
        empty = tmp_path / "empty"
        (empty / "val" / "a").mkdir(parents=True)
        run = write_run(tmp_path, empty)
    else:
        run = tmp_path / "not_a_run"
        run.mkdir()
    argv = [str(run), "--folds", "1" if case == "one_fold" else "2"]
    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert {"one_fold": "at least 2 folds", "no_args": f"{run} is not a run folder",
            "no_train_split": str(tmp_path / "empty"),
            "multilabel": "is a multi-label run"}[case] in err  # fmt: skip
    assert not (run / tool.CSV_NAME).exists()
