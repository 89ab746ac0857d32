"""ConfusionMatrixHook: the validation confusion matrix per epoch, as PNG and JSON."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hooks._artifacts import flush, guarded, save_image, submit
from trainer.distributed import all_reduce_sum, is_distributed, is_global_zero
from trainer.hook import Hook
from trainer.io import atomic_write_json

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont
    from torchmetrics.classification import MulticlassConfusionMatrix

    from trainer.engine import Engine

# Above this many classes the axes show indices and a legend maps index -> name.
_MAX_NAMED = 30
# Up to this many classes each cell shows its number.
_MAX_ANNOTATED = 20


class ConfusionMatrixHook(Hook):
    """Writes ``plots/confusion_matrix/epoch_XXX.png`` and ``.json`` after each validation.

    The PNG has the counts and the row-normalised matrix (recall per true class) side by side;
    the JSON holds ``classes``, ``matrix`` (counts, rows = true class) and ``normalized``.
    ``XXX`` is ``engine.state.epoch`` (from 0, as in ``metrics.csv`` and checkpoint names).
    The sanity check is left out.

    Each validation batch only stores the predicted and true class indices on the device; the
    torchmetrics matrix is updated once at the epoch end, because its update (``bincount``)
    reads the device on CUDA and would stall every batch. Under DDP each rank sees its shard of
    the validation split; the matrices are summed over ranks and rank 0 writes the files.

    Args:
        out_dir: the run folder.

    Attributes:
        matrix: the latest confusion matrix, a CPU int64 tensor (rows = true class), or None.
        figure: the latest rendering, a PIL image, for display in a notebook.

    Example:
        >>> hook = ConfusionMatrixHook("runs/a")
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.matrix.sum()  # number of validation images
    """

    order = 40

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(out_dir) / "plots" / "confusion_matrix"
        self.matrix: torch.Tensor | None = None
        self.figure: Image.Image | None = None
        self._metric: MulticlassConfusionMatrix | None = None
        self._preds: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def _ensure_metric(self, engine: Engine) -> MulticlassConfusionMatrix:
        # Deferred, like matplotlib below: torchmetrics pulls in matplotlib.pyplot on import.
        from torchmetrics.classification import MulticlassConfusionMatrix

        n = engine.data.num_classes
        if self._metric is None or self._metric.num_classes != n:
            # Summed over ranks below, explicitly: torchmetrics' own sync would be a second
            # collective that a rank with an empty validation shard never reaches.
            self._metric = MulticlassConfusionMatrix(
                n, validate_args=False, sync_on_compute=False
            ).to(engine.device)
        return self._metric

    def on_fit_start(self, engine: Engine) -> None:
        self._ensure_metric(engine)

    def on_validation_epoch_start(self, engine: Engine) -> None:
        self._preds, self._targets = [], []

    def on_validation_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        if engine.state.phase != "val":
            return
        self._preds.append(outputs["logits"].argmax(1))
        self._targets.append(outputs["targets"])

    def on_validation_epoch_end(self, engine: Engine) -> None:
        # Under DDP a rank with an empty shard must still join the all-reduce.
        if engine.state.phase != "val" or not (self._preds or is_distributed()):
            return
        metric = self._ensure_metric(engine)
        metric.reset()
        if self._preds:
            metric.update(torch.cat(self._preds), torch.cat(self._targets))
            local = metric.compute()
        else:
            n = engine.data.num_classes
            local = torch.zeros(n, n, dtype=torch.long, device=engine.device)
        self._preds, self._targets = [], []
        self.matrix = all_reduce_sum(local.clone()).cpu().long()
        if not is_global_zero():
            return
        classes = list(engine.data.classes)
        stem = self.dir / f"epoch_{engine.state.epoch:03d}"
        counts = self.matrix.numpy()
        support = counts.sum(axis=1, keepdims=True)
        # A class with no validation image gets a zero row rather than NaNs.
        normalized = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
        with guarded(stem.with_suffix(".json")):
            atomic_write_json(
                stem.with_suffix(".json"),
                {
                    "epoch": engine.state.epoch,
                    "classes": classes,
                    "matrix": counts.tolist(),
                    "normalized": np.round(normalized, 4).tolist(),
                },
            )
        png, epoch, counts = stem.with_suffix(".png"), engine.state.epoch + 1, counts.copy()

        def job() -> None:  # on the artefact writer: drawing is most of this hook's cost
            # Titles count epochs from 1, like the history plots; file names keep the index.
            self.figure = plot_confusion_matrix(counts, normalized, classes, epoch)
            save_image(self.figure, png)

        submit(job, png)

    def on_fit_end(self, engine: Engine) -> None:
        flush()  # the PNGs exist when fit returns

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        flush()


def plot_confusion_matrix(
    counts: np.ndarray,
    normalized: np.ndarray,
    classes: list[str],
    epoch: int,
    caption: str | None = None,
) -> Image.Image:
    """Counts and row-normalised panels side by side, sized so 100 classes stay readable.

    Drawn with numpy and PIL rather than matplotlib (~5 ms instead of ~0.9 s for 6 classes):
    it is redrawn every epoch on the artefact writer, which shares the CPU with training.
    Cells are coloured through the "Blues" colormap; up to 20 classes each cell shows its
    value; above 30 classes the axes show indices and a legend on the right maps them to names.

    Args:
        counts: the confusion matrix, rows = true class.
        normalized: ``counts`` divided by each row's sum (zero rows stay zero).
        classes: class names by index.
        epoch: the epoch number shown in the titles.
        caption: shown in the titles instead of ``epoch N`` (e.g. the evaluated split).
    """
    from PIL import Image, ImageDraw

    n = len(classes)
    # Pixels per cell: 48 for a few classes, 30 at 20 (values fit), 14 at 100 (indices fit),
    # then shrinking so the matrix stays within 1400 px; never under 240 px for a few classes.
    cell = max(1, min(48, max(600 // max(n, 1), min(14, 1400 // max(n, 1)))), -(-240 // max(n, 1)))
    font = _font(int(np.clip(cell * 0.55, 9, 13)))
    ticks, legend = axis_labels(classes)
    step = max(1, int(np.ceil(16 / cell)))  # past ~100 classes even indices overlap
    side = n * cell
    tick_w = max(int(font.getlength(ticks[i])) for i in range(0, n, step)) + 6 if n else 6
    pad, title_h, bar_w = 10, 24, 60  # bar_w: colour bar and its tick labels
    # One panel: "true" label, y tick labels, the matrix, the colour bar; x labels below.
    panel_w = pad + 14 + tick_w + side + 8 + bar_w
    panel_h = title_h + side + tick_w + 22
    legend_w = 0
    if legend:
        per_col = max(1, (panel_h - title_h) // 12)
        cols = [legend[k : k + per_col] for k in range(0, len(legend), per_col)]
        col_w = max(int(_font(10).getlength(t)) for t in legend) + 12
        legend_w = pad + len(cols) * col_w
    img = Image.new("RGB", (2 * panel_w + legend_w + pad, panel_h + pad), "white")
    draw = ImageDraw.Draw(img)
    what = caption if caption is not None else f"epoch {epoch}"
    panels = [
        (counts, f"counts ({what})", max(1, int(counts.max(initial=0))), "d"),
        (normalized, f"normalised by true class ({what})", 1.0, ".2f"),
    ]
    for k, (values, title, vmax, fmt) in enumerate(panels):
        x0 = k * panel_w + pad + 14 + tick_w  # the matrix's left edge
        y0 = title_h
        draw.text((x0 + side / 2, 4), title, fill="black", font=_font(13), anchor="mt")
        rgb = _colour(np.asarray(values, dtype=float) / vmax)
        if side:
            img.paste(Image.fromarray(rgb.repeat(cell, 0).repeat(cell, 1)), (x0, y0))
        draw.rectangle((x0 - 1, y0 - 1, x0 + side, y0 + side), outline="black")
        if n <= _MAX_ANNOTATED:
            for i in range(n):
                for j in range(n):
                    v = values[i, j]
                    draw.text(
                        (x0 + j * cell + cell / 2, y0 + i * cell + cell / 2),
                        format(v, fmt),
                        fill="white" if v > 0.6 * vmax else "black",
                        font=font,
                        anchor="mm",
                    )
        # y tick labels right-aligned beside the rows; the x ones are the same column turned.
        column = Image.new("RGB", (tick_w, side), "white")
        col_draw = ImageDraw.Draw(column)
        for i in range(0, n, step):
            col_draw.text(
                (tick_w - 4, i * cell + cell / 2), ticks[i], fill="black", font=font, anchor="rm"
            )
        img.paste(column, (x0 - tick_w, y0))
        img.paste(column.transpose(Image.Transpose.ROTATE_90), (x0, y0 + side))
        draw.text((x0 + side / 2, panel_h - 4), "predicted", fill="black", font=font, anchor="md")
        true = Image.new("RGB", (60, 14), "white")
        ImageDraw.Draw(true).text((30, 7), "true", fill="black", font=font, anchor="mm")
        img.paste(
            true.transpose(Image.Transpose.ROTATE_90), (x0 - tick_w - 14, y0 + side // 2 - 30)
        )
        _colour_bar(img, draw, (x0 + side + 8, y0), max(side, 60), vmax, fmt, font)
    if legend:
        small = _font(10)
        for c, lines in enumerate(cols):
            draw.multiline_text(
                (2 * panel_w + pad + c * col_w, title_h),
                "\n".join(lines),
                fill="black",
                font=small,
                spacing=2,
            )
    return img


def axis_labels(classes: list[str]) -> tuple[list[str], list[str]]:
    """The tick labels, and the ``index: name`` legend lines (empty up to 30 classes)."""
    if len(classes) <= _MAX_NAMED:
        return [_short(c, 18) for c in classes], []
    return [str(i) for i in range(len(classes))], [
        f"{i}: {_short(c, 24)}" for i, c in enumerate(classes)
    ]


def _short(name: str, max_len: int) -> str:
    # PIL draws text as it is: no mathtext, so unlike ``label`` no ``$`` escaping.
    return name if len(name) <= max_len else name[: max_len - 1] + "…"


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    return ImageFont.load_default(size)


def _colour(fraction: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as uint8 RGB through matplotlib's "Blues" (one table lookup)."""
    from matplotlib import colormaps  # the colormap module only; no figure machinery

    rgba = colormaps["Blues"](np.clip(fraction, 0.0, 1.0), bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def _colour_bar(
    img: Image.Image,
    draw: ImageDraw.ImageDraw,
    at: tuple[int, int],
    height: int,
    vmax: float,
    fmt: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """A vertical colour ramp, ``vmax`` at the top, with three tick labels."""
    from PIL import Image

    x, y = at
    ramp = _colour(np.linspace(1.0, 0.0, height)[:, None]).repeat(12, 1)
    img.paste(Image.fromarray(ramp), (x, y))
    draw.rectangle((x - 1, y - 1, x + 12, y + height), outline="black")
    for frac in (1.0, 0.5, 0.0):
        v = frac * vmax
        text = format(round(v), "d") if fmt == "d" else f"{v:.1f}"
        ty = y + (1.0 - frac) * (height - 1)
        draw.text((x + 16, ty), text, fill="black", font=font, anchor="lm")
