"""Rebuild a trained classifier and its labels mapping from a checkpoint, outside the engine.

``tools/export.py``, ``tools/evaluate.py`` and the ONNX export hook share these, so the three
agree on which weights a checkpoint stands for (EMA when it has them, like validation) and on
the preprocessing (the engine's ``x / 255``, then ``(x - mean) / std``).

Example:
    >>> ckpt = load_checkpoint("runs/a/checkpoints/best.pt")
    >>> model, weights = model_from_checkpoint(ckpt)  # weights: "ema" or "model"
    >>> mapping = labels_mapping_from_checkpoint(ckpt, "runs/a/checkpoints/best.pt")
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.data import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from trainer.data.label_sets import TASK_DATA_DEFAULTS
from trainer.data.transforms import EvalResize
from trainer.errors import CheckpointError
from trainer.models import build_model
from trainer.onnx_mapping import validate_labels_mapping
from trainer.run_files import CHECKPOINTS, LABELS_MAPPING_JSON

log = logging.getLogger("trainer")

__all__ = [
    "checkpoint_classes",
    "checkpoint_weights",
    "labels_mapping_from_checkpoint",
    "model_from_checkpoint",
    "normalize",
    "run_dir_of",
]

MAPPING_NAME = LABELS_MAPPING_JSON


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` to the float input the model saw: ``(x / 255 - mean) / std``.

    Float images are taken as already normalised, as the engine does.
    """
    if images.dtype != torch.uint8:
        return images.float()
    m = torch.tensor(list(mean), dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s


def checkpoint_weights(ckpt: dict[str, Any], *, ema: bool = True) -> tuple[dict[str, Any], str]:
    """The state dict a checkpoint stands for, and which one it is: ``"ema"`` or ``"model"``.

    The EMA weights are the ones validation scored and best.pt was picked by, so they win
    when present unless ``ema`` is False.
    """
    ema_state = ckpt.get("ema")
    if ema and isinstance(ema_state, dict) and ema_state.get("module") is not None:
        return ema_state["module"], "ema"
    return ckpt["model"], "model"


def checkpoint_classes(ckpt: dict[str, Any], path: str | os.PathLike[str]) -> list[str]:
    """Class names by index, as the checkpoint was trained on."""
    classes = ckpt.get("classes")
    if not classes:
        raise CheckpointError(
            f"{path} has no 'classes' entry, so the class names are unknown. Use a checkpoint "
            "written by the trainer (checkpoints/best.pt or last.pt of a run)."
        )
    return [str(c) for c in classes]


def model_from_checkpoint(
    ckpt: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    ema: bool = True,
    model_name: str | None = None,
) -> tuple[nn.Module, str]:
    """Build the architecture named in the checkpoint's ``args`` and load its weights.

    Args:
        ckpt: a checkpoint from ``trainer.checkpoint.load_checkpoint``.
        path: where it came from, for error messages.
        ema: load the EMA weights when the checkpoint has them.
        model_name: architecture to build when ``args`` does not name one (e.g. a run started
            from a notebook without ``args``); overrides ``args["model"]`` when given.

    Returns:
        The model in eval mode on the CPU, and ``"ema"`` or ``"model"`` for the weights used.

    Raises:
        CheckpointError: the architecture is unknown or the weights do not fit it.
    """
    classes = checkpoint_classes(ckpt, path)
    name = model_name or (ckpt.get("args") or {}).get("model")
    if not name:
        raise CheckpointError(
            f"{path} does not say which architecture it holds (no args['model']); pass the "
            "model name explicitly, e.g. --model resnet18."
        )
    model = build_model(str(name), len(classes))
    state, which = checkpoint_weights(ckpt, ema=ema)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {path} do not fit a {name} with {len(classes)} classes ({e}). "
            "Pass the architecture the run was trained with."
        ) from e
    return model.eval(), which


def run_dir_of(checkpoint_path: str | os.PathLike[str]) -> Path:
    """The run folder of ``run/checkpoints/x.pt``, else the checkpoint's own folder."""
    path = Path(checkpoint_path)
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


def labels_mapping_from_checkpoint(
    ckpt: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    img_size: int | None = None,
) -> dict[str, Any]:
    """The labels mapping (as ``ImageFolderData.labels_mapping()``) for a checkpoint.

    The run folder's ``labels_mapping.json`` is used when its classes are the checkpoint's;
    otherwise the mapping is rebuilt from the checkpoint: its classes, ``args["img_size"]``
    (or ``img_size``), ``args["crop_pct"]`` and ``args["val_resize"]`` (runs before them: the
    default recipe), ImageNet mean/std, which is what ``ImageFolderData`` normalises with,
    and a multi-label checkpoint's task and thresholds.

    Raises:
        CheckpointError: the image size is nowhere to be found.
    """
    classes = checkpoint_classes(ckpt, path)
    saved = Path(run_dir_of(path)) / MAPPING_NAME
    if saved.is_file() and img_size is None:
        try:
            mapping = validate_labels_mapping(
                json.loads(saved.read_text(encoding="utf-8")), str(saved)
            )
            names = [mapping["idx_to_class"][str(i)] for i in range(len(classes))]
            if names == classes and len(mapping["idx_to_class"]) == len(classes):
                return mapping
        except (OSError, ValueError, KeyError, TypeError) as e:  # OnnxModelError is a ValueError
            # Unreadable, malformed or foreign: the checkpoint itself is the authority.
            log.warning("ignoring %s (%s); using the checkpoint's classes and args", saved, e)
    args = ckpt.get("args") or {}
    size = img_size or args.get("img_size")
    if not size:
        raise CheckpointError(
            f"{path} does not record the image size (no args['img_size']) and there is no "
            f"matching {saved}; pass the size the model was trained at, e.g. --img-size 224."
        )
    task = _task_fields(ckpt)
    # Unset (args made in Python): the task's default, as ImageFolderData picks it.
    val_resize = (
        args.get("val_resize") or TASK_DATA_DEFAULTS[task.get("task", "multiclass")]["val_resize"]
    )
    resize = EvalResize.of(int(size), args.get("crop_pct", CROP_PCT), val_resize)
    return {
        "class_to_idx": {c: i for i, c in enumerate(classes)},
        "idx_to_class": {str(i): c for i, c in enumerate(classes)},
        "num_classes": len(classes),
        **resize.mapping(),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        **task,
    }


def _task_fields(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A multi-label checkpoint's mapping fields (its state holds the tuned thresholds)."""
    thresholds = (ckpt.get("state") or {}).get("thresholds")
    if thresholds is None:
        return {}
    return {"task": "multilabel", "activation": "sigmoid", "thresholds": list(thresholds)}
