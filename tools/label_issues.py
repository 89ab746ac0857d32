"""Training images whose label looks wrong, by K-fold cross-validation and confident learning.

python tools/label_issues.py RUN [--folds 5] [--epochs N]

The stronger, slower companion of ``tools/train.py --find-label-issues``. The run's training
split is cut into K folds (seeded, per class); for each fold, a fresh model is trained on the
other folds with the run's settings (``RUN/args.json``: model, image size, recipe, epochs unless
--epochs says otherwise) through the library's Engine, and predicts the held-out fold. Every
training image so gets class probabilities from a model that never saw it, and confident
learning (Northcutt et al., 2021; ``find_label_issues``, as cleanlab's
``filter_by="prune_by_noise_rate"``) picks the images whose given label the rest of the data
contradicts. Writes ``RUN/label_issues_cv.csv`` with the columns of ``label_issues.csv``:
the flagged images first, then the others, each part most suspicious first; ``score`` is
the held-out probability of the given label minus the largest other one (negative: the
models prefer another class), ``suggested`` the most probable class. Nothing is moved or
relabelled; the run folder gains that one file.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import sys
import tempfile
from pathlib import Path

if not __package__:  # run as a file (python tools/label_issues.py), not imported as a module
    # Python put tools/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p).resolve() != _here)]

import numpy as np

from hooks.label_issues import HEADER
from tools.train_config import build_data, build_loss_from_config
from trainer.config import TrainConfig
from trainer.config_cli import program_name
from trainer.data import ImageFolderData
from trainer.data.demo import demo_dataset
from trainer.engine import Engine
from trainer.errors import ConfigError, UserError
from trainer.io import atomic_write_csv
from trainer.models import build_model
from trainer.rng import seed_everything
from trainer.run_files import ARGS_JSON

log = logging.getLogger("trainer")

CSV_NAME = "label_issues_cv.csv"


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The calibrated confident joint ``C[given, true]`` (counts; each row sums to the number
    of images given that label).

    An image counts towards ``true = j`` when its probability of ``j`` is at least class
    ``j``'s threshold (the mean probability of ``j`` over the images labelled ``j``); of
    several such classes, the most probable; an image with none is not counted.
    """
    n_classes = probs.shape[1]
    thresholds = np.array([
        probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(n_classes)
    ])  # fmt: skip
    above = probs >= thresholds - 1e-6
    guess = np.where(above, probs, -1.0).argmax(1)
    counted = above.any(1)
    joint = np.zeros((n_classes, n_classes))
    np.add.at(joint, (labels[counted], guess[counted]), 1)
    given = np.bincount(labels, minlength=n_classes)
    rows = joint.sum(1, keepdims=True)
    return np.where(rows > 0, joint / np.maximum(rows, 1) * given[:, None], 0.0)


def find_label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Confident learning's prune by noise rate: a boolean mask of the likely wrong labels.

    For each given class ``i`` and other class ``j``, the ``round(C[i, j])`` images labelled
    ``i`` with the largest ``p(j) - p(i)`` are flagged (``C``: ``confident_joint``); an image
    whose given label is also its most probable class is never flagged.

    Args:
        labels: ``(N,)`` given class indices.
        probs: ``(N, C)`` out-of-sample class probabilities.
    """
    joint = np.rint(confident_joint(labels, probs)).astype(int)
    issues = np.zeros(len(labels), bool)
    for i in range(probs.shape[1]):
        rows = np.flatnonzero(labels == i)
        if len(rows) <= 1:
            continue
        for j in range(probs.shape[1]):
            if j != i and joint[i, j] > 0:
                margin = probs[rows, j] - probs[rows, i]
                issues[rows[np.argsort(-margin, kind="stable")[: joint[i, j]]]] = True
    return issues & (probs.argmax(1) != labels)


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold: per class, its images shuffled (seeded) and dealt round the folds,
    so a class of two images or more keeps one in training whichever fold is held out. A
    class with a single image is never held out (fold -1)."""
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), -1)
    start = 0
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(rows) >= 2:
            out[rows] = (start + np.arange(len(rows))) % folds
            start += len(rows)  # the next class starts where this one ended: even folds
    return out


def out_of_fold_probs(
    cfg: TrainConfig, data: ImageFolderData, folds: int, work: Path
) -> np.ndarray:
    """``(N, C)`` class probabilities of each training image from the model that did not
    train on it (NaN rows: images never held out, or that do not decode)."""
    paths = data.train_samples.paths()
    labels = np.asarray(data.train_samples.targets)
    fold = fold_of(labels, folds, cfg.seed)
    probs = np.full((len(paths), data.num_classes), np.nan)
    csv = work / "fold.csv"
    # Each fold is a label file of absolute paths (train: the other folds; val: this one),
    # read like any --data. Its images passed the start-up check when ``data`` was built:
    # not checked again (nor cached under the temporary file's name).
    fold_cfg = dataclasses.replace(cfg, data=str(csv), image_key="path", label_key="label",
                                   check_leakage=False, verify="none")  # fmt: skip
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        rows = [[p, data.classes[t], "val" if f == k else "train"]
                for p, t, f in zip(paths, labels.tolist(), fold.tolist(), strict=True)]  # fmt: skip
        atomic_write_csv(csv, ["path", "label", "split"], rows)
        fold_data = build_data(fold_cfg, csv)
        if fold_data.classes != data.classes:  # fold_of keeps every class in training
            raise AssertionError(f"fold {k} lost classes")
        seed_everything(cfg.seed + k)
        model = build_model(str(cfg.model), data.num_classes, pretrained=cfg.pretrained)
        settings = {**cfg.engine_kwargs(), "sanity_steps": 0}
        engine = Engine(model, fold_data, loss=build_loss_from_config(cfg, fold_data), **settings)
        log.info("fold %d/%d: training on %d images, predicting %d", k + 1, folds,
                 len(fold_data.train_samples), len(held))  # fmt: skip
        engine.fit()
        probs[held] = engine.predict([paths[i] for i in held]).double().numpy()
        del engine, model
        fold_data.close()
        gc.collect()
    return probs


def rank_rows(
    paths: list[str], labels: np.ndarray, probs: np.ndarray, classes: list[str]
) -> tuple[list[list[object]], int]:
    """``label_issues_cv.csv``'s rows (flagged first, each part by score) and the number
    flagged. Images without out-of-fold probabilities come last, with empty cells."""
    known = ~np.isnan(probs).any(1)
    issues = np.zeros(len(labels), bool)
    issues[known] = find_label_issues(labels[known], probs[known])
    safe = np.nan_to_num(probs, nan=0.0)
    own = safe[np.arange(len(labels)), labels]
    others = safe.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    score = own - others.max(1)
    order = np.lexsort((score, ~issues, ~known))  # last key first: known, flagged, score
    rows: list[list[object]] = []
    for i in order.tolist():
        if not known[i]:
            rows.append([paths[i], classes[labels[i]], "", "", "", i])
            continue
        best = int(safe[i].argmax())
        rows.append([paths[i], classes[labels[i]], classes[best], round(float(score[i]), 6),
                     round(float(safe[i, best]), 6), i])  # fmt: skip
    return rows, int(issues.sum())


def run_config(run: Path) -> TrainConfig:
    """The run's settings from ``RUN/args.json``."""
    args_path = run / ARGS_JSON
    if not run.is_dir() or not args_path.is_file():
        raise ConfigError(
            f"{run} is not a run folder: it has no {ARGS_JSON}. Give the folder tools/train.py "
            "wrote (its --out), which holds the run's settings."
        )
    try:
        args = json.loads(args_path.read_text(encoding="utf-8"))
        return TrainConfig.from_dict(args).resolved()
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{args_path} cannot be read as a run's settings ({e}); "
                          "give the folder of a run made by tools/train.py") from e  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog=program_name("tools/label_issues.py"),
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("run", type=Path, help="the run folder (tools/train.py's --out)")
    parser.add_argument("--folds", type=int, default=5, help="K: models trained, >= 2")
    parser.add_argument("--epochs", type=int, help="epochs per fold model; default: the run's")
    args = parser.parse_args(argv)
    try:
        if args.folds < 2:
            raise ConfigError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"--epochs {args.epochs}: give at least 1")
        cfg = run_config(args.run)
        if args.epochs is not None:
            cfg = dataclasses.replace(cfg, epochs=args.epochs)
        root = Path(cfg.data) if cfg.data else demo_dataset()
        data = build_data(dataclasses.replace(cfg, check_leakage=False), root)
        if data.task == "multilabel":
            raise ConfigError(
                f"{args.run} is a multi-label run: confident learning finds wrong single labels "
                "(one per image), not wrong label sets. Run it on a single-label run."
            )
        labels = np.asarray(data.train_samples.targets)
        with tempfile.TemporaryDirectory() as work:
            probs = out_of_fold_probs(cfg, data, args.folds, Path(work))
        rows, flagged = rank_rows(data.train_samples.paths(), labels, probs, data.classes)
        out = args.run / CSV_NAME
        atomic_write_csv(out, HEADER, rows)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.run / CSV_NAME} ({e})", file=sys.stderr)
        return 2
    print(f"{flagged} of {len(rows)} training images flagged (the first rows); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
