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
from trainer.data.pipelines import load_transforms_file
from trainer.data.transforms import EvalResize
from trainer.errors import ConfigError
from trainer.losses import build_loss


def parse_config(argv: Sequence[str] | None = None, **options: Any) -> dict[str, Any]:
    """``trainer.config_cli.parse_config``, and W&B installed when ``--wandb`` asks for it
    (before anything is scanned or written). ``options`` go to it (tools/lr_find.py's)."""
    config = parse_settings(argv, **options)
    if config["wandb"] and importlib.util.find_spec("wandb") is None:
        raise ConfigError(WANDB_MISSING)
    return config


def build_data(cfg: TrainConfig, root: Path) -> ImageFolderData:
    """The run's data: the tree or label file at ``root``, with ``--transforms``'s pipelines."""
    resize = EvalResize.of(int(cfg.img_size or 0), cfg.crop_pct, cfg.val_resize)
    pipelines = load_transforms_file(cfg.transforms, resize) if cfg.transforms else None
    return ImageFolderData(
        root,
        **cfg.data_kwargs(),
        train_transform=pipelines[0] if pipelines else None,
        val_transform=pipelines[1] if pipelines else None,
    )


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
