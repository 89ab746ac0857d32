"""Picking the device and the numeric precision; steadier glibc malloc for CPU training."""

from __future__ import annotations

import ctypes
import sys

import torch

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


def steady_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Fix glibc malloc's mmap and trim thresholds for this process (and the loader workers
    it forks). Returns whether it could (glibc only; elsewhere nothing changes).

    glibc starts with a 128 KB mmap threshold that it raises only as mmapped blocks are
    freed. Training on the CPU allocates and frees activation-sized blocks every step: until
    the threshold has risen past them, each one is a fresh mmap whose pages fault in again.
    On the demo that was ~500k minor faults and ~15% of every epoch, in some processes and
    not others. With fixed thresholds the blocks stay in the heap from the first step, and
    up to ``trim_threshold`` of freed memory is kept for reuse instead of returned.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        mallopt(m_trim_threshold, trim_threshold)
    )
