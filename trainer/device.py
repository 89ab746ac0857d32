"""Picking the device and the numeric precision; putting the model on it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainer.errors import ConfigError

PRECISIONS = ("32", "16-mixed", "bf16-mixed", "auto")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(
            f"--device {device!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device} asked for CUDA, but no CUDA GPU is available; use --device cpu"
        )
    mps = getattr(torch.backends, "mps", None)
    if dev.type == "mps" and not (mps is not None and mps.is_available()):
        raise ConfigError(
            f"--device {device} asked for Apple's MPS, which this machine or PyTorch build does "
            "not have; use --device cpu (or auto)"
        )
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map "auto" to bf16 on CUDA cards that support it, fp16 on other CUDA cards, fp32 elsewhere.

    An explicit choice is kept: "16-mixed" on the CPU runs fp16 autocast with a GradScaler.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a resolved precision, or None for full fp32."""
    return {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def place_model(
    model: nn.Module, device: torch.device, channels_last: bool, sync_bn: bool = False
) -> nn.Module:
    """``model`` on ``device``, in NHWC when ``channels_last``; with ``sync_bn`` under a
    process group, its BatchNorm layers become SyncBatchNorm (CUDA only)."""
    model = model.to(device)
    if sync_bn and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if device.type != "cuda":
            raise ConfigError(
                f"sync_bn needs CUDA GPUs (SyncBatchNorm has no {device.type} kernel); "
                "drop --sync-bn, or train on GPUs."
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(memory_format=torch.channels_last) if channels_last else model
