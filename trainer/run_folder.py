"""The run folder: its file names, a new one per run, never an existing run overwritten by
accident, a resume checked in full before anything in the folder is written, and the files that
describe the run (``args.json``, ``data_report.json``, ``labels_mapping.json``), each written
here and only here.

tools/train.py and ``hooks.default_hooks(out_dir)`` (through ``hooks.run_folder.RunFolderHook``)
both go through this module, so a run made from Python leaves the same files as a CLI run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
import time
from pathlib import Path
from typing import Any

from trainer.checkpoint import check_classes
from trainer.errors import CheckpointError, ConfigError, OutputError
from trainer.io import atomic_write_json, clean_stale_temp_files, free_space, is_disk_full
from trainer.run_files import (
    ARGS_JSON,
    CHECKPOINTS,
    CLASS_DISTRIBUTION_CSV,
    DATA_REPORT_JSON,
    DATASET_STATS_JSON,
    EXPORT_REPORT_JSON,
    LABEL_ISSUES_CSV,
    LABELS_MAPPING_JSON,
    LR_FIND_CSV,
    LR_FIND_PNG,
    METRICS_CSV,
    MODEL_INFO_JSON,
    MODEL_ONNX,
    MOST_CONFUSED_CSV,
    PER_CLASS_CSV,
    PLOTS,
    REPORT_HTML,
    SAMPLER_DISTRIBUTION_CSV,
    STEPS_CSV,
    TENSORBOARD,
    TOP_LOSSES_CSV,
)

# A folder with one of these holds a run: a new run there would overwrite its checkpoints.
RUN_MARKERS = (ARGS_JSON, METRICS_CSV, CHECKPOINTS)
# What a run writes; --overwrite removes these (and model.onnx's data files), nothing else.
RUN_OUTPUTS = (
    CHECKPOINTS, PLOTS, TENSORBOARD, ARGS_JSON, DATA_REPORT_JSON, LABELS_MAPPING_JSON,
    METRICS_CSV, MODEL_ONNX, EXPORT_REPORT_JSON, REPORT_HTML, MODEL_INFO_JSON,
    DATASET_STATS_JSON, CLASS_DISTRIBUTION_CSV, SAMPLER_DISTRIBUTION_CSV, LR_FIND_CSV,
    LR_FIND_PNG, PER_CLASS_CSV, STEPS_CSV, MOST_CONFUSED_CSV, TOP_LOSSES_CSV,
    LABEL_ISSUES_CSV,
)  # fmt: skip
# The folders a run writes into (and deletes old checkpoints from): never through a link.
RUN_FOLDERS = (CHECKPOINTS, PLOTS, TENSORBOARD)
# Settings that shape the weights a checkpoint holds: a resume must not change them.
MODEL_SETTINGS = ("model", "img_size", "ema_decay")
# Settings that draw the train/val split of a tree of class folders (or a label file's rows
# without a split): another value on resume would move validation images into training.
SPLIT_SETTINGS = ("seed", "val_fraction")
SPLIT_DIRS = ("train", "val", "valid", "validation", "test")


def run_dir_of(path: Path) -> Path:
    """The run folder of ``path``: itself, or the folder above a ``checkpoints/*.pt`` file."""
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
            raise write_error(path, e) from e
    raise AssertionError("unreachable")


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds what a run writes first (its args, metrics or checkpoints)."""
    return any((out / name).exists() for name in RUN_MARKERS)


def out_problem(out: Path, overwrite: bool) -> str | None:
    """Why a new run must not start in ``out``, or None when it may."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder; pick another --out"
    if overwrite or not holds_run(out):
        return None
    return (
        f"the run folder {out} already holds a run; a new run there would overwrite its "
        f"checkpoints. Continue it with --resume {out}, pick another --out, or pass "
        "--overwrite to replace it."
    )


def remove_run_outputs(out: Path) -> None:
    """--overwrite: delete what an earlier run wrote in ``out``; other files stay."""
    for path in [*(out / name for name in RUN_OUTPUTS), *out.glob(f"{MODEL_ONNX}*.data")]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def check_no_links(out: Path) -> None:
    """Refuse a run folder whose output folders are symbolic links: the run writes and deletes
    files in them, and must never do so outside ``out``.

    Raises:
        OutputError: names the link and the fix.
    """
    for name in RUN_FOLDERS:
        if (out / name).is_symlink():
            raise OutputError(
                f"{out / name} is a symbolic link (to {(out / name).readlink()}): a run writes, "
                f"and deletes old checkpoints, only inside its run folder {out}. Replace the link "
                "with a folder, or to keep a run on another disk, put the whole run folder there "
                "(--out)."
            )


def claim(out: Path, overwrite: bool = False) -> None:
    """Make ``out`` ready to write: the earlier run's files gone with ``overwrite``, the folder
    made, and the temporary files a killed run left removed. Call it after every check.

    Raises:
        OutputError: the folder cannot be made or written.
    """
    if not overwrite:  # --overwrite removes the links themselves (never what they point to)
        check_no_links(out)
    try:
        if overwrite:
            remove_run_outputs(out)
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(out)  # what a killed run left, anywhere in the folder
    except OSError as e:
        raise write_error(out, e) from e


def write_run_files(out: Path, args: dict[str, Any], data: Any) -> None:
    """``args.json`` (``args``), ``data_report.json`` and ``labels_mapping.json`` (from
    ``data``, when it has them): the files that describe a run, written at its start.

    Raises:
        OutputError: naming the folder, when one cannot be written.
    """
    check_no_links(out)
    new = not (out / ARGS_JSON).exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / ARGS_JSON, args)
        if hasattr(data, "write_report"):
            data.write_report(out / DATA_REPORT_JSON)  # rewritten when images are skipped
        write_labels_mapping(out, data)
    except OSError as e:
        if new:  # a rerun would take the half-made folder for a run, and refuse it
            with contextlib.suppress(OSError):
                (out / ARGS_JSON).unlink(missing_ok=True)
        raise write_error(out, e) from e


def write_labels_mapping(
    out: Path, data: Any, thresholds: list[float] | None = None
) -> Path | None:
    """``out/labels_mapping.json`` from ``data.labels_mapping()``, with multi-label
    ``thresholds`` when given (``state.thresholds``); None when data has none."""
    if not hasattr(data, "labels_mapping"):
        return None
    path = out / LABELS_MAPPING_JSON
    mapping = data.labels_mapping()
    if thresholds is not None:
        mapping["thresholds"] = list(thresholds)
    atomic_write_json(path, mapping)
    return path


def write_error(path: Path, e: OSError) -> OutputError:
    """The error for a run folder that cannot be written, naming it (and its free space when
    the disk is full) and the fix."""
    space = f"; {free_space(path)}" if is_disk_full(e) else ""
    return OutputError(
        f"cannot write to the run folder {path} ({e.strerror or e}{space}); "
        "choose a writable --out with free space"
    )


def library_args(engine: Any) -> dict[str, Any]:
    """The settings of a run made from Python, read back from its engine and data: what a CLI
    run's ``args.json`` holds, for the settings the objects know (``--config`` replays it)."""
    from trainer.config import DATA, ENGINE, TrainConfig

    data = engine.data
    found: dict[str, Any] = {}
    if hasattr(data, "root"):
        found["data"] = str(data.root)
    for f in dataclasses.fields(TrainConfig):
        targets = f.metadata.get("to", ())
        if DATA in targets and hasattr(data, f.name):
            found[f.name] = getattr(data, f.name)
        elif ENGINE in targets:
            name = f.metadata.get("engine_name") or f.name
            if hasattr(engine, name):
                found[f.name] = getattr(engine, name)
    augment = getattr(data, "augment", None)
    if dataclasses.is_dataclass(augment) and not isinstance(augment, type):
        found.update(dataclasses.asdict(augment))
    groups = getattr(engine.optimizer, "param_groups", None) or [{}]
    lr = groups[0].get("initial_lr", groups[0].get("lr"))
    if lr is not None:
        found["lr"] = float(lr)
    if found.get("device") is not None:
        found["device"] = str(found["device"])
    return {k: v for k, v in found.items() if v is None or isinstance(v, bool | int | float | str)}


# ------------------------------------------------------------------------------ resume
def splits_by_fraction(data: str | None) -> bool:
    """Whether the run's data is split into train and val by ``seed`` and ``val_fraction``:
    a tree of class folders only, or a label file (its rows without a split)."""
    if data is None:
        return False  # the demo has train/ and val/
    root = Path(data)
    if root.is_file():
        return True
    return root.is_dir() and not any((root / name).is_dir() for name in SPLIT_DIRS)


def check_resume_settings(ckpt: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Raise ``CheckpointError`` naming the flag when this run would change the model, or the
    train/val split of a tree that is split by ``seed`` and ``val_fraction``."""
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
    if not splits_by_fraction(config.get("data")):
        return
    for key in SPLIT_SETTINGS:
        if key in trained and trained[key] != config[key]:
            flag = "--" + key.replace("_", "-")
            raise CheckpointError(
                f"cannot resume from {path}: the run split {config['data']} into train and val "
                f"with {flag} {trained[key]}, this run asks for {config[key]}, which would move "
                f"validation images into training; drop {flag} (a resumed run folder replays "
                "its args.json) or start a new run with another --out."
            )


def check_resume_weights(
    ckpt: dict[str, Any], model: Any, classes: list[str], config: dict[str, Any], path: Path
) -> None:
    """Raise ``CheckpointError`` unless ``ckpt`` was trained on ``classes`` of the same data
    and fits ``model``."""
    check_classes(ckpt, classes, path)
    trained = (ckpt.get("args") or {}).get("data")
    now = config.get("data")
    if "data" in (ckpt.get("args") or {}) and _other_data(trained, now):
        raise CheckpointError(
            f"cannot resume from {path}: the checkpoint was trained on --data {trained}, this "
            f"run asks for --data {now} (the same class names, other images); drop --data (a "
            "resumed run folder replays its args.json) or start a new run with another --out."
        )
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


def _other_data(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a != b
    return Path(a).expanduser().resolve() != Path(b).expanduser().resolve()


def check_lr_on_resume(config: dict[str, Any]) -> None:
    """``--lr auto`` picks a new run's lr; a resumed run keeps its own."""
    if config.get("lr") == "auto":
        raise ConfigError(
            "--lr auto picks the learning rate of a new run; a resumed run keeps the one it "
            "was started with (in its args.json). Drop --lr auto."
        )
