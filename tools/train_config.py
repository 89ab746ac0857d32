"""tools/train.py's settings: parsed from the command line by ``trainer.config_cli`` (the flags
are declared once, in ``trainer/config.py``), and the data and loss built from them (shared with
tools/lr_find.py)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hooks.wandb import MISSING as WANDB_MISSING
from trainer.config import TrainConfig
from trainer.config_cli import parse_config as parse_settings
from trainer.data import ImageFolderData
from trainer.data.label_sets import TASK_DATA_DEFAULTS
from trainer.data.pipelines import TransformError, load_transforms_file
from trainer.errors import ConfigError
from trainer.losses import build_loss
from trainer.task import ClassificationTask
from trainer.tasks import task_of


def parse_config(argv: Sequence[str] | None = None, **options: Any) -> dict[str, Any]:
    """``trainer.config_cli.parse_config``, and W&B installed when ``--wandb`` asks for it
    (before anything is scanned or written). ``options`` go to it (tools/lr_find.py's)."""
    config = parse_settings(argv, **options)
    if config["wandb"] and importlib.util.find_spec("wandb") is None:
        raise ConfigError(WANDB_MISSING)
    return config


def build_data(cfg: TrainConfig, root: Path) -> ImageFolderData:
    """The run's data: the tree or label file at ``root``, with ``--transforms``'s pipelines.
    The data checks the validation one against its resize, which the data's task picks when
    ``--val-resize`` is not given."""
    size = int(cfg.img_size or 0)
    pipelines = None
    if cfg.transforms:
        ignored = cfg.augment().per_image_flags + (["--color-jitter"] if cfg.color_jitter else [])
        ignored += [] if cfg.hflip else ["--no-hflip"]
        if ignored:  # the file's pipeline is the whole of training's: they would do nothing
            raise ConfigError(
                f"--transforms {cfg.transforms} is the whole training pipeline, so "
                f"{', '.join(ignored)} would not run: drop them, or add those operations to "
                "the file's train_transforms."
            )
        pipelines = load_transforms_file(cfg.transforms, size, check_val=False)
    try:
        return ImageFolderData(
            root,
            **cfg.data_kwargs(),
            train_transform=pipelines[0] if pipelines else None,
            val_transform=pipelines[1] if pipelines else None,
        )
    except TransformError as e:  # only a pipeline of the file can be refused so
        raise ConfigError(f"--transforms {cfg.transforms}: {e}") from e


def record_effective(config: dict[str, Any], data: ImageFolderData) -> str | None:
    """Put the values the run uses of ``TASK_SETTINGS`` in ``config`` (so args.json records
    them): the given ones, and for those left unset the data's (its task's crop scale and
    validation resize) and the task's monitor. Returns the log line that names the task's
    defaults applied where they differ from the multi-class ones, or None."""
    task = task_of(data)
    used = {"crop_scale": data.crop_scale, "val_resize": data.val_resize,
            "monitor": task.monitor(config.get("monitor"))}  # fmt: skip
    generic = {**TASK_DATA_DEFAULTS["multiclass"], "monitor": ClassificationTask.default_monitor}
    applied = {k: v for k, v in used.items() if config.get(k) != v and v != generic[k]}
    config.update(used)
    if not applied:
        return None
    flags = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in applied.items())
    return f"{task.name} data: {flags}"


def build_loss_from_config(cfg: TrainConfig, data: ImageFolderData) -> torch.nn.Module:
    """The run's loss (tools/train.py and tools/lr_find.py alike)."""
    multilabel = getattr(data, "task", "multiclass") == "multilabel"
    try:
        return build_loss(
            cfg.loss,
            label_smoothing=cfg.label_smoothing,
            class_counts=data.class_counts["train"] if cfg.loss_weights == "balanced" else None,
            num_images=len(data.train_samples) if multilabel else None,
        )
    except ValueError as e:
        raise ConfigError(f"--loss {cfg.loss}: {e}; --task tells which data this is") from e
