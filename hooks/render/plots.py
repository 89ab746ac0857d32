"""Every figure the hooks and tools draw, one renderer per kind, and the PNG writers.

matplotlib draws the charts (history curves, bars per class, the confusion matrix); PIL
draws the image grids; Pillow encodes every PNG. The hooks call these on the run's
artefact writer (``engine.artifacts``), off the training thread.

Example:
    >>> fig = plot_confusion_matrix(counts, ["cat", "dog"], "epoch 3")
    >>> save_png(fig, "plots/confusion_matrix/epoch_002.png")
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trainer.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

# zlib level 1: plots' flat colours compress about as well as at the default level, faster.
PNG_LEVEL = 1
# Above this many classes the axes show indices (the names are in the JSON or CSV files).
MAX_NAMED = 30
# Up to this many classes each confusion-matrix cell shows its value.
MAX_ANNOTATED = 20
# Above this many classes no grid label is readable: the confusion-matrix figure shows the
# most confused pairs and the lowest per-class accuracies instead.
MAX_GRID = 50
# Bars in each panel of that summary.
SUMMARY_BARS = 20


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> None:
    """Render a matplotlib figure to PNG and write it atomically (no half-written image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, pil_kwargs={"compress_level": PNG_LEVEL})
    atomic_write_bytes(path, buf.getvalue())


def save_image(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Encode a PIL image as PNG and write it atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_LEVEL)
    atomic_write_bytes(path, buf.getvalue())


def label(name: str, max_len: int = 24) -> str:
    """A class name safe to draw: shortened, and ``$`` escaped so mathtext never parses it."""
    if len(name) > max_len:
        name = name[: max_len - 1] + "…"
    return name.replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # deferred: matplotlib costs ~0.2 s to import

    return Figure(figsize=(width, height), layout="constrained")


# ---------------------------------------------------------------------------- curves and bars
def plot_history(
    history: Sequence[dict[str, float]],
    title: str,
    ylabel: str,
    series: Sequence[tuple[str, str]],
    steps: Sequence[tuple[float, float]] = (),
    steps_label: str = "train, per step",
) -> Figure:
    """Curves over epochs (counted from 1) for each ``(history key, legend label)`` present.

    Every point has a marker, so a one-epoch run still shows; a NaN or infinite value leaves a
    gap. A positive series spanning more than 20x (the learning rate) gets a log axis.
    ``steps`` adds a thin line without markers: ``(epochs done, value)`` points between the
    epochs, e.g. ``steps.csv``'s loss at ``step / steps_per_epoch``.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    epochs = [int(row.get("epoch", i)) + 1 for i, row in enumerate(history)]
    plotted: list[float] = []
    for k, (key, name) in enumerate(series):
        if any(key in row for row in history):
            ys = [_finite(row.get(key)) for row in history]
            marker = 3 if len(epochs) > 30 else 5
            ax.plot(epochs, ys, marker="o", markersize=marker, label=name, color=f"C{k}")
            plotted += [y for y in ys if not math.isnan(y)]
    if steps:
        step_x = [x for x, _ in steps]
        step_y = [_finite(y) for _, y in steps]
        ax.plot(step_x, step_y, linewidth=0.8, alpha=0.6, label=steps_label, color="C7")
        plotted += [y for y in step_y if not math.isnan(y)]
    if plotted and min(plotted) > 0 and max(plotted) / min(plotted) > 20:
        ax.set_yscale("log")
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
    ax.grid(alpha=0.3)
    if (len(series) > 1 or steps) and plotted:
        ax.legend()
    return fig


def _finite(value: float | None) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.nan


def plot_class_bars(
    classes: Sequence[str],
    groups: Sequence[tuple[str, Sequence[float] | np.ndarray]],
    title: str,
    ylabel: str,
    names_file: str,
) -> Figure:
    """Grouped bars per class, one bar per ``(legend label, values)`` group.

    Up to 30 classes the axis shows their names, beyond it indices (the names are in
    ``names_file``), thinned to at most 100 ticks; and each group is one step line over the
    classes instead of a bar per class: a pixel or two per bar would not read, and a
    thousand classes' bars took seconds to draw (on the artefact writer, whose Python holds
    the GIL that the training loop needs), where the lines take a tenth of that.
    """
    n = len(classes)
    fig = _figure(float(np.clip(2 + 0.1 * n * len(groups), 6, 30)), 4.5)
    ax = fig.add_subplot()
    x = np.arange(n)
    named = n <= MAX_NAMED
    width = 0.8 / max(1, len(groups))
    for k, (name, values) in enumerate(groups):
        if named:
            ax.bar(x + (k - (len(groups) - 1) / 2) * width, values, width, label=name)
        else:
            ax.stairs(values, np.arange(n + 1) - 0.5, label=name, linewidth=1.2)
    ticks = [label(c, 18) for c in classes] if named else [str(i) for i in range(n)]
    step = max(1, math.ceil(n / 100))
    ax.set_xticks(
        x[::step], ticks[::step], rotation=45 if named else 90, ha="right" if named else "center",
        fontsize=float(np.clip(300 / max(n, 1), 5, 9)),
    )  # fmt: skip
    ax.set_xlim(-0.6, n - 0.4)
    ax.set(title=title, ylabel=ylabel)
    ax.set_xlabel("class" if named else f"class index (names in {names_file})")
    ax.legend()
    return fig


def plot_class_distribution(classes: Sequence[str], split_counts: dict[str, list[int]]) -> Figure:
    """Grouped bars: images per class, one bar per split; indices on the axis past 30 classes."""
    groups = list(split_counts.items())
    return plot_class_bars(classes, groups, "Images per class and split", "images",
                           "dataset_stats.json")  # fmt: skip


def plot_shares(
    classes: Sequence[str],
    dataset: Sequence[int],
    expected: Sequence[float],
    drawn: Sequence[int],
    epoch: int,
) -> Figure:
    """Grouped bars per class: share of the dataset, expected share and drawn share, in %."""
    groups = []
    for name, values in (("dataset", dataset), ("expected", expected), ("drawn", drawn)):
        v = np.asarray(values, dtype=float)
        groups.append((name, 100 * v / v.sum() if v.sum() > 0 else v))
    return plot_class_bars(classes, groups, f"Training draw by class, epoch {epoch + 1}",
                           "% of the epoch's draw", "sampler_distribution.csv")  # fmt: skip


# ------------------------------------------------------------------------ reliability diagram
def plot_reliability(bins: np.ndarray, caption: str) -> Figure:
    """Accuracy against confidence per confidence bin, with the diagonal of perfect calibration,
    and below it how many images fall in each bin.

    Args:
        bins: ``(3, B)`` per bin: image count, sum of top-1 confidences, sum of top-1 hits (the
            engine's ``state.calibration``; a last bin of confidences of exactly 1, if there,
            is drawn with the bin below it).
        caption: what the title says the diagram is of, e.g. ``"epoch 3, ECE 0.041"``.
    """
    bins = np.asarray(bins, dtype=np.float64)
    if bins.shape[1] > 1:  # torchmetrics' extra bin of confidences of exactly 1
        bins = np.concatenate([bins[:, :-2], bins[:, -2:].sum(axis=1, keepdims=True)], axis=1)
    count, confidence, hits = bins
    n = len(count)
    edges = np.linspace(0.0, 1.0, n + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n
    safe = np.maximum(count, 1)
    fig = _figure(5.6, 6.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    filled = count > 0
    accuracy, mean_confidence = (hits / safe)[filled], (confidence / safe)[filled]
    x = centres[filled]
    top.bar(x, accuracy, width * 0.9, label="accuracy", color="C0")
    top.bar(x, np.abs(mean_confidence - accuracy), width * 0.9,
            bottom=np.minimum(accuracy, mean_confidence), fill=False, edgecolor="C3", hatch="///",
            linewidth=0.8, label="gap to mean confidence")  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(title=f"Reliability ({caption})", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(centres, count, width * 0.9, color="C7")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    return fig


# --------------------------------------------------------------------------- confusion matrix
def plot_confusion_matrix(counts: np.ndarray, classes: Sequence[str], caption: str) -> Figure:
    """Counts and the row-normalised matrix (recall per true class) side by side.

    Up to 20 classes each cell shows its value; above 30 the axes show class indices. The
    figure grows with the classes up to ~1,400 px per panel. Above ``MAX_GRID`` (50)
    classes it is ``plot_confusion_summary`` instead: no grid that size has readable labels.

    Args:
        counts: the confusion matrix, rows = true class.
        classes: class names by index.
        caption: what the titles say the matrix is of, e.g. ``"epoch 3"`` or ``"test"``.
    """
    counts = np.asarray(counts)
    n = len(classes)
    if n > MAX_GRID:
        return plot_confusion_summary(counts, classes, caption)
    support = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, support, out=np.zeros(counts.shape), where=support > 0)
    side = float(np.clip(1.5 + 0.35 * n, 4.0, 14.0))
    fig = _figure(2 * side + 1.5, side + 1.0)
    named = n <= MAX_NAMED
    ticks = [label(c, 18) for c in classes] if named else [str(i) for i in range(n)]
    fontsize = float(np.clip(200 / max(n, 1), 4, 9))
    panels = [(counts, f"counts ({caption})", "d"), (normalized, f"recall ({caption})", ".2f")]
    for k, (values, title, fmt) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        vmax = max(1.0, float(values.max(initial=0))) if fmt == "d" else 1.0
        im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(n), ticks, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), ticks, fontsize=fontsize)
        ax.set(title=title, xlabel="predicted", ylabel="true")
        if n <= MAX_ANNOTATED:
            for (i, j), v in np.ndenumerate(values):
                colour = "white" if v > 0.6 * vmax else "black"
                ax.text(j, i, format(v, fmt), ha="center", va="center", color=colour,
                        fontsize=fontsize)  # fmt: skip
    return fig


def plot_label_confusion(counts: np.ndarray, classes: Sequence[str], caption: str) -> Figure:
    """Multi-label: each class's 2x2 confusion counts as one row (TP, FN, FP, TN), coloured
    by the share of the class's row (its images' decisions).

    Args:
        counts: ``(C, 4)`` TP, FN, FP, TN per class.
        classes: class names by index.
        caption: what the title says the counts are of, e.g. ``"epoch 3"``.
    """
    counts = np.asarray(counts)
    n = len(classes)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(6.0, float(np.clip(1.2 + 0.3 * n, 3.0, 40.0)))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(4), ["TP", "FN", "FP", "TN"])
    named = n <= MAX_NAMED
    ax.set_yticks(range(n), [label(c, 18) for c in classes] if named else list(map(str, range(n))))
    ax.set(title=f"per-class 2x2 confusion ({caption})", ylabel="class")
    if n <= 4 * MAX_ANNOTATED:
        for (i, j), v in np.ndenumerate(counts):
            colour = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, str(v), ha="center", va="center", color=colour, fontsize=7)
    return fig


def plot_pr_curves(
    precision: Sequence[Sequence[float]],
    recall: Sequence[Sequence[float]],
    ap: Sequence[float],
    classes: Sequence[str],
    caption: str,
    most: int = 20,
) -> Figure:
    """Multi-label: each class's precision-recall curve, labelled with its AP; past ``most``
    classes, the ``most`` with the lowest AP (the ones to look at).

    Args:
        precision, recall: per class, the curve's points (``trainer.multilabel.pr_curves``).
        ap: per class average precision (NaN for a class without positives: left out).
        classes: class names by index.
        caption: what the title says the curves are of, e.g. ``"epoch 3"``.
        most: the most curves drawn.
    """
    shown = [i for i in np.argsort(np.nan_to_num(np.asarray(ap, float), nan=2.0)) if ap[i] == ap[i]]
    fig = _figure(7.0, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for i in shown[:most]:
        ax.plot(recall[i], precision[i], drawstyle="steps-post", lw=1.2,
                label=f"{label(classes[i], 18)} (AP {ap[i]:.3f})")  # fmt: skip
    lowest = f", the {most} lowest AP of {len(shown)}" if len(shown) > most else ""
    ax.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"Precision-recall per class ({caption}{lowest})")  # fmt: skip
    if shown:
        ax.legend(fontsize=7, loc="lower left", ncol=2 if len(shown[:most]) > 10 else 1)
    return fig


def confused_pairs(counts: np.ndarray, k: int = SUMMARY_BARS) -> list[tuple[int, int, int]]:
    """The ``k`` largest off-diagonal cells as ``(true, predicted, count)``, largest first.

    Ties keep row-major order; empty cells are left out.
    """
    off = np.array(counts, dtype=np.int64)  # a copy: the diagonal is zeroed
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    top = np.argsort(-flat, kind="stable")[:k]
    n = off.shape[1]
    return [(int(i) // n, int(i) % n, int(flat[i])) for i in top if flat[i] > 0]


def lowest_recall(counts: np.ndarray, k: int = SUMMARY_BARS) -> list[tuple[int, float, int]]:
    """The ``k`` classes with the lowest recall (accuracy on their own images) as
    ``(class, recall, support)``, lowest first; ties keep index order. Classes with no
    image are left out."""
    counts = np.asarray(counts)
    support = counts.sum(axis=1)
    present = np.flatnonzero(support > 0)
    recall = np.diag(counts)[present] / support[present]
    order = np.argsort(recall, kind="stable")[:k]
    return [(int(present[j]), float(recall[j]), int(support[present[j]])) for j in order]


def plot_confusion_summary(counts: np.ndarray, classes: Sequence[str], caption: str) -> Figure:
    """The confusion matrix of many classes as two bar charts of a fixed size (1,400 x 700 px).

    Left, the ``SUMMARY_BARS`` most confused pairs (true -> predicted, in images); right, the
    classes with the lowest recall. Labels are ``#index name``; the title gives the overall
    accuracy. Every cell stays in the data file the figure was drawn from.
    """
    counts = np.asarray(counts)
    n = len(classes)
    fig = _figure(14.0, 7.0)
    total = int(counts.sum())
    accuracy = float(np.trace(counts)) / total if total else 0.0
    fig.suptitle(f"{n} classes, {caption}: accuracy {accuracy:.1%} of {total:,} images")

    def name(i: int) -> str:
        return f"#{i} {label(classes[i], 18)}"

    pairs = confused_pairs(counts)
    worst = lowest_recall(counts)
    panels: list[tuple[list[str], list[float], str, str]] = [
        (
            [f"{name(t)} → {name(p)}" for t, p, _ in pairs],
            [float(c) for _, _, c in pairs],
            "most confused: true → predicted",
            "images",
        ),
        (
            [f"{name(i)} (of {s})" for i, _, s in worst],
            [r for _, r, _ in worst],
            "lowest accuracy per class (recall)",
            "recall",
        ),
    ]
    for k, (labels, values, title, xlabel) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        y = np.arange(len(values))
        bars = ax.barh(y, values, color=f"C{3 * k}")
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()  # the worst at the top
        ax.set(title=title, xlabel=xlabel)
        if xlabel == "recall":
            ax.set_xlim(0, 1)
            ax.bar_label(bars, [f"{v:.2f}" for v in values], padding=2, fontsize=8)
        else:
            ax.bar_label(bars, [f"{v:.0f}" for v in values], padding=2, fontsize=8)
        if not values:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    return fig


# ------------------------------------------------------------------------------ image grids
TILE = 128  # the image area of a grid tile, in pixels
_CAPTION, _FRAME, _GAP, _TITLE = 30, 4, 6, 26
_GREEN, _RED = (44, 160, 44), (214, 39, 40)


def to_display(
    img: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """A CHW image tensor as an HWC array (2-d for one channel) that shows correctly.

    uint8 images are shown as they are; float images are de-normalised with ``mean``/``std``
    when given (the engine's convention), else taken as already in [0, 1], then clamped.
    """
    img = img.detach().cpu()
    if img.dtype != torch.uint8:
        img = img.float()
        if mean is not None and std is not None:
            img = img * torch.tensor(list(std)).view(-1, 1, 1) + torch.tensor(list(mean)).view(
                -1, 1, 1
            )
        img = img.clamp(0.0, 1.0)
    arr = img.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def plot_grid(
    images: Sequence[torch.Tensor | None],
    records: Sequence[dict[str, Any]],
    classes: Sequence[str],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str = "",
) -> Image.Image:
    """Images captioned ``pred (prob)`` / ``true #index``, framed green if right, red if wrong.

    Args:
        images: CHW tensors (None draws a grey tile).
        records: per image, a dict with ``index``, ``true``, ``pred``, ``prob``, ``correct``,
            and optionally ``loss`` (shown instead of the index).
        classes: class names by index.
        mean: the normalisation of float images, to undo for display.
        std: likewise.
        title: the line above the grid.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n = len(images)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    width = max(320, cols * (TILE + _GAP) + _GAP)
    canvas = Image.new("RGB", (width, _TITLE + rows * (_CAPTION + TILE + _GAP) + _GAP), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP, 6), _fit_text(draw, title, width - 2 * _GAP, font), fill="black", font=font)
    if not images:
        draw.text((width // 2, _TITLE + 60), "no mistakes", fill="black", font=font, anchor="mm")
    for k, (img, rec) in enumerate(zip(images, records, strict=True)):
        x = _GAP + (k % cols) * (TILE + _GAP)
        y = _TITLE + _GAP + (k // cols) * (_CAPTION + TILE + _GAP)
        colour = _GREEN if rec["correct"] else _RED
        pred = f"pred: {classes[rec['pred']]} ({rec['prob']:.2f})"
        # Top losses show the loss where the others show the image's index.
        tail = f"loss {rec['loss']:.2f}" if "loss" in rec else f"#{rec['index']}"
        true = f"true: {classes[rec['true']]}  {tail}"
        draw.text((x + 1, y + 2), _fit_text(draw, pred, TILE - 2, font), fill=colour, font=font)
        draw.text((x + 1, y + 15), _fit_text(draw, true, TILE - 2, font), fill=colour, font=font)
        top = y + _CAPTION
        draw.rectangle((x, top, x + TILE - 1, top + TILE - 1), fill=(128, 128, 128))
        if img is not None:
            tile = _fitted(img, mean, std)
            canvas.paste(tile, (x + (TILE - tile.width) // 2, top + (TILE - tile.height) // 2))
        draw.rectangle((x, top, x + TILE - 1, top + TILE - 1), outline=colour, width=_FRAME)
    return canvas


def _fitted(img: torch.Tensor, mean: Any, std: Any) -> Image.Image:
    """The image scaled to fit inside the frame: nearest when enlarging keeps small images'
    pixels crisp, bilinear when shrinking."""
    from PIL import Image

    arr = to_display(img, mean, std)
    if arr.dtype != np.uint8:
        arr = (arr * 255).round().astype(np.uint8)
    pil = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
    inner = TILE - 2 * _FRAME
    scale = inner / max(pil.width, pil.height)
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    return pil.resize(size, resample)


def _fit_text(draw: Any, text: str, width: int, font: Any) -> str:
    """``text`` cut with an ellipsis to ``width`` pixels; glyphs the font lacks become ``?``."""
    from PIL import ImageFont

    if isinstance(font, ImageFont.ImageFont):  # Pillow's bitmap fallback font: latin-1 only
        text = text.encode("latin-1", "replace").decode("latin-1")
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
