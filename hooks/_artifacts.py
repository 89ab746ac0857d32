"""Helpers the plotting hooks share: guarded writes, PNG rendering, labels and image display."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainer.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("trainer.hooks")


@contextlib.contextmanager
def guarded(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a failure to build or write the artefact at ``path`` into a warning.

    An observability artefact is never worth a run: a full disk, a read-only folder or a
    matplotlib error logs a warning naming the file and training goes on.

    Example:
        >>> with guarded(out / "plots/loss.png"):
        ...     save_png(fig, out / "plots/loss.png")
    """
    try:
        yield
    except OSError as e:
        log.warning("could not write %s (%s); training goes on", path, e)
    except Exception as e:
        # Not an I/O error, so most likely a plotting bug: keep the traceback for the report.
        log.warning(
            "could not write %s (%s: %s); training goes on",
            path,
            type(e).__name__,
            e,
            exc_info=True,
        )


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Render ``fig`` to PNG in memory, then write it atomically (no half-written image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())


def label(name: str, max_len: int = 24) -> str:
    """A class name safe to draw: shortened, and ``$`` escaped so mathtext never parses it."""
    if len(name) > max_len:
        name = name[: max_len - 1] + "…"
    return name.replace("$", r"\$")


def to_display(
    img: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """A CHW image tensor as an HWC array matplotlib shows correctly.

    uint8 images are shown as they are; float images are de-normalised with ``mean``/``std``
    when given (the engine's convention), else taken as already in [0, 1], then clamped.
    """
    img = img.detach().cpu()
    if img.dtype != torch.uint8:
        img = img.float()
        if mean is not None and std is not None:
            m = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
            s = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
            img = img * s + m
        img = img.clamp(0.0, 1.0)
    arr = img.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr
