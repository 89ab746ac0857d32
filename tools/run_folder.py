"""The run folder of tools/train.py: a new one per run, never an existing run overwritten by
accident, and a resume checked in full before anything in the folder is written."""

from __future__ import annotations

import itertools
import shutil
import time
from pathlib import Path
from typing import Any

from trainer.checkpoint import check_classes
from trainer.errors import CheckpointError, OutputError

# A folder with one of these holds a run: a new run there would overwrite its checkpoints.
RUN_MARKERS = ("args.json", "metrics.csv", "checkpoints")
# What a run writes; --overwrite removes these (and model.onnx's data files), nothing else.
RUN_OUTPUTS = (
    "checkpoints", "plots", "tensorboard", "args.json", "data_report.json", "labels_mapping.json",
    "metrics.csv", "model.onnx", "export_report.json", "report.html", "model_info.json",
    "dataset_stats.json", "class_distribution.csv", "sampler_distribution.csv", "lr_find.csv",
    "lr_find.png", "per_class.csv", "steps.csv",
)  # fmt: skip
# Settings that shape the weights a checkpoint holds: a resume must not change them.
MODEL_SETTINGS = ("model", "img_size", "ema_decay")


def run_dir_of(path: Path) -> Path:
    return path.parent.parent if path.suffix == ".pt" else path


def same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def new_run_dir(base: Path) -> Path:
    """Make and return ``base/<timestamp>``, or ``<timestamp>-2``, ``-3``, ... when taken.

    Made, not just named: two runs started in the same second each get a folder of their own.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = base / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise OutputError(
                f"cannot make the run folder {path} ({e.strerror or e}); "
                "choose a writable --out with free space"
            ) from e
    raise AssertionError("unreachable")


def out_problem(out: Path, overwrite: bool) -> str | None:
    """Why a new run must not start in ``out``, or None when it may."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder; pick another --out"
    if overwrite or not any((out / name).exists() for name in RUN_MARKERS):
        return None
    return (
        f"the run folder {out} already holds a run; a new run there would overwrite its "
        f"checkpoints. Continue it with --resume {out}, pick another --out, or pass "
        "--overwrite to replace it."
    )


def remove_run_outputs(out: Path) -> None:
    """--overwrite: delete what an earlier run wrote in ``out``; other files stay."""
    for path in [*(out / name for name in RUN_OUTPUTS), *out.glob("model.onnx*.data")]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def check_resume_settings(ckpt: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Raise ``CheckpointError`` naming the flag when this run would change the model."""
    trained = ckpt.get("args") or {}
    for key in MODEL_SETTINGS:
        if key not in trained:
            continue
        was, now = trained[key], config[key]
        # EMA on or off changes what the checkpoint holds; another decay is a tuning choice.
        differs = bool(was) != bool(now) if key == "ema_decay" else was != now
        if differs:
            flag = "--" + key.replace("_", "-")
            raise CheckpointError(
                f"cannot resume from {path}: the checkpoint was trained with {flag} {was}, "
                f"this run asks for {now}; drop {flag} (a resumed run folder replays its "
                "args.json) or start a new run with another --out."
            )


def check_resume_weights(
    ckpt: dict[str, Any], model: Any, classes: list[str], config: dict[str, Any], path: Path
) -> None:
    """Raise ``CheckpointError`` unless ``ckpt`` was trained on ``classes`` and fits ``model``."""
    check_classes(ckpt, classes, path)
    try:
        model.load_state_dict(ckpt["model"])  # fit loads it again, with everything else
    except (RuntimeError, KeyError, TypeError) as e:
        why = " ".join(str(e).split())  # torch's message spans lines
        why = why if len(why) < 300 else why[:300] + "..."
        raise CheckpointError(
            f"cannot resume from {path}: its weights do not fit a {config['model']} with "
            f"{len(classes)} classes at --img-size {config['img_size']} ({why}). "
            "Resume with the settings it was trained with, or start a new run with another --out."
        ) from e
