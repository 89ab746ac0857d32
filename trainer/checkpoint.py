"""Checkpoints: atomic saves, weights_only loads, and finding the one to resume from."""

from __future__ import annotations

import copy
import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainer.errors import CheckpointError
from trainer.io import atomic_open
from trainer.run_files import CHECKPOINTS, LAST_PT


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Serialise straight into a temp file, then rename it over ``path``: a crash leaves the
    old file or the new one. (Through a BytesIO it cost half again as much CPU.)"""
    with atomic_open(path) as f:
        torch.save(checkpoint, f)
    return Path(path)


def host_copy(obj: Any) -> Any:
    """A copy of ``obj`` that training can no longer change: tensors copied to the host
    (detached), dicts, lists and tuples rebuilt, anything else deep-copied.

    What a background thread may serialise while the next epoch trains. For a GPU model this
    is one device-to-host copy of the weights and optimizer state (tens of milliseconds for
    resnet50), instead of the whole save on the training thread.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = copy.copy(obj)  # its own type and attributes (an OrderedDict, a Counter)
        for k, v in obj.items():
            out[k] = host_copy(v)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(host_copy(v) for v in obj)
    return copy.deepcopy(obj)


_PLAIN = (str, int, float, bool, bytes, complex, type(None))


def unloadable(obj: Any, where: str = "") -> tuple[str, str] | None:
    """``(where, type name)`` of the first value in ``obj`` that ``load_checkpoint`` (torch's
    ``weights_only`` loader) would refuse, e.g. a numpy array or a defaultdict; None if none.

    Plain values, tensors, dicts, lists and tuples are walked; anything else is tried: saved
    and loaded back."""
    if type(obj) in _PLAIN or isinstance(obj, torch.Tensor):
        return None
    if type(obj) is dict:
        for k, v in obj.items():
            found = unloadable(k, f"{where} (a key)") or unloadable(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if type(obj) in (list, tuple):
        return next((f for i, v in enumerate(obj) if (f := unloadable(v, f"{where}[{i}]"))), None)
    buffer = io.BytesIO()
    try:
        torch.save(obj, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception:
        return where, type(obj).__name__
    return None


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain Python data only."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path to the .pt file")
    fix = "Pass a run's checkpoints/best.pt or last.pt, or the run folder."
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's text: pages, and advice to load it unsafely
        raise CheckpointError(
            f"checkpoint {path} could not be read: it is not a PyTorch file of tensors and plain "
            f"Python data (a truncated file, or another kind of file). {fix}"
        ) from e
    except Exception as e:  # torch.load fails on foreign bytes with any error (KeyError, ...)
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(e).__name__}: {reason}); it may be "
            f"truncated or not a checkpoint of this trainer. {fix}"
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer (no 'model' entry). {fix}")
    return ckpt


def checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """The file ``path`` stands for: itself, or a run folder's ``checkpoints/last.pt``."""
    path = Path(path)
    if not path.is_dir():
        return path
    last = path / CHECKPOINTS / LAST_PT
    if not last.is_file():
        raise CheckpointError(
            f"no checkpoint in {path}: expected {last}. Pass the .pt file itself, or the "
            "--out folder of an earlier run."
        )
    return last


def class_difference(model: Sequence[str], data: Sequence[str]) -> str | None:
    """How the classes a model was trained on differ from the data's, or None if they match."""
    if list(model) == list(data):
        return None
    only_model, only_data = sorted(set(model) - set(data)), sorted(set(data) - set(model))
    if only_model or only_data:
        return f"only in the model: {only_model}; only in the data: {only_data}"
    return f"the same names in another order (model: {list(model)}, data: {list(data)})"


def check_classes(ckpt: dict[str, Any], classes: list[str], path: str | os.PathLike[str]) -> None:
    """Raise ``CheckpointError`` naming the difference unless ``ckpt`` has these classes."""
    detail = class_difference(list(ckpt.get("classes", [])), classes)
    if detail is not None:
        raise CheckpointError(
            f"checkpoint {path} was trained on other classes ({detail}). Resume with the data "
            "it was trained on, or start a new run."
        )


def check_resumable(ckpt: dict[str, Any], classes: list[str], path: str | os.PathLike[str]) -> None:
    """Raise ``CheckpointError`` unless a fit on ``classes`` can resume ``ckpt`` exactly: same
    classes, and saved between epochs (a single process's ``interrupted.pt`` is saved inside
    one, and resuming it would train that epoch's first batches twice)."""
    check_classes(ckpt, classes, path)
    state = ckpt.get("state", {})
    done = len(state.get("history", []))
    if state.get("phase") in ("train", "val") and done <= int(state.get("epoch", 0)):
        then = (
            f"Resume from the run folder (--resume RUN_FOLDER uses checkpoints/last.pt, the end "
            f"of epoch {done})"
            if done
            else "No epoch had finished, so start the run again"
        )
        raise CheckpointError(
            f"{path} was saved in the middle of epoch {done + 1}, so a resume from it could not "
            f"continue exactly. {then}; the file still serves tools/evaluate.py and "
            "tools/export.py."
        )
