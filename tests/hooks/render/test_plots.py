"""hooks/render/plots.py: the renderers (matplotlib charts, PIL grids) and the Pillow PNG writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hooks.render import plots
from hooks.render.plots import (
    confused_pairs,
    lowest_recall,
    plot_confusion_matrix,
    plot_grid,
    plot_reliability,
    plot_shares,
    save_image,
    save_png,
    to_display,
)
from tests.conftest import StandInData, png_size


@pytest.mark.parametrize(("mode", "shape"), [("RGB", (37, 53, 3)), ("L", (20, 9))])
def test_save_image_round_trips_through_pillow(tmp_path: Path, mode: str, shape: tuple) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    save_image(Image.fromarray(pixels, mode), tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as back:
        assert back.format == "PNG" and back.mode == mode
        assert np.array_equal(np.asarray(back), pixels)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


@pytest.mark.parametrize("n", [6, 25, 50])
def test_many_classes_use_indices(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, (n, n))
    counts[0] = 0  # a class with no validation image must not give NaNs
    classes = [f"class $name$ number {i} with a long tail" for i in range(n)]
    fig = plot_confusion_matrix(counts, classes, "epoch 3")
    save_png(fig, tmp_path / "cm.png")
    w, h = png_size(tmp_path / "cm.png")
    assert 400 < w <= 3200 and 300 < h <= 1700
    counts_ax, recall_ax = fig.axes[0], fig.axes[2]  # each panel is followed by its colour bar
    ticks = [t.get_text() for t in counts_ax.get_xticklabels()]
    if n > 30:
        assert ticks == [str(i) for i in range(n)]  # indices
    else:
        assert ticks[0].startswith(r"class \$name\$") and len(ticks) == n  # mathtext escaped
    # Cells are annotated up to 20 classes only.
    assert bool(counts_ax.texts) == (n <= 20)
    recall = recall_ax.images[0].get_array()
    assert np.isfinite(recall).all() and recall[0].sum() == 0
    rows = counts.sum(axis=1) > 0
    assert np.allclose(np.asarray(recall).sum(axis=1)[rows], 1.0)


def many_class_matrix(n: int = 1000, per_class: int = 20) -> np.ndarray:
    """A half-trained model's counts: 40% right, the rest spread over every class (the worst
    case for compression), with three planted confusions and a class never recognised."""
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(n), per_class)
    pred = np.where(rng.random(true.size) < 0.4, true, rng.integers(0, n, true.size))
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (true, pred), 1)
    for t, p, c in ((7, 3, 15), (500, 501, 12), (999, 0, 9)):
        counts[t] = 0
        counts[t, t] = per_class - c
        counts[t, p] = c
    counts[42] = 0
    counts[42, 43] = per_class  # class 42 is always called 43: recall 0
    return counts


def test_many_classes_get_the_most_confused_pairs_and_worst_classes(tmp_path: Path) -> None:
    counts = many_class_matrix()
    classes = [f"n{i:08d} a long synset $name$" for i in range(1000)]
    pairs = confused_pairs(counts)
    assert pairs[:4] == [(42, 43, 20), (7, 3, 15), (500, 501, 12), (999, 0, 9)]
    assert len(pairs) == 20 and all(t != p for t, p, _ in pairs)
    worst = lowest_recall(counts)
    assert worst[0] == (42, 0.0, 20) and len(worst) == 20
    assert [r for _, r, _ in worst] == sorted(r for _, r, _ in worst)
    fig = plot_confusion_matrix(counts, classes, "epoch 3")
    save_png(fig, tmp_path / "cm.png")
    assert png_size(tmp_path / "cm.png") == (1400, 700)  # whatever the class count
    pairs_ax, recall_ax = fig.axes
    labels = [t.get_text() for t in pairs_ax.get_yticklabels()]
    assert len(labels) == 20
    assert labels[1] == "#7 n00000007 a long … → #3 n00000003 a long …"  # names cut short
    assert [round(b.get_width()) for b in pairs_ax.patches[:4]] == [20, 15, 12, 9]
    assert pairs_ax.yaxis_inverted() and recall_ax.yaxis_inverted()  # the worst at the top
    assert recall_ax.get_yticklabels()[0].get_text().startswith("#42 ")
    assert recall_ax.patches[0].get_width() == 0.0
    # 7,847 of the 20,000 are on the diagonal.
    assert fig.get_suptitle() == "1000 classes, epoch 3: accuracy 39.2% of 20,000 images"


def test_grid_is_framed_by_correctness_with_captions() -> None:
    torch.manual_seed(0)
    images: list[torch.Tensor | None] = [
        torch.randint(0, 256, (3, 40, 24), dtype=torch.uint8) for _ in range(4)
    ]
    images.append(None)  # an image that could not be read: a grey tile
    records = [
        {"index": 10 + i, "true": i % 3, "pred": (i + 1) % 3, "prob": 0.5, "correct": i % 2 == 0}
        for i in range(5)
    ]
    classes = ["a", "b", "a class name far too long to fit under one tile"]
    grid = np.asarray(plot_grid(images, records, classes, title="t"))
    cols = 3  # ceil(sqrt(5))
    for k, rec in enumerate(records):
        x = plots._GAP + (k % cols) * (plots.TILE + plots._GAP)
        y = plots._TITLE + plots._GAP + (k // cols) * (plots._CAPTION + plots.TILE + plots._GAP)
        frame = tuple(grid[y + plots._CAPTION + 1, x + 1])
        assert frame == (plots._GREEN if rec["correct"] else plots._RED)
        assert (grid[y : y + plots._CAPTION, x : x + plots.TILE] != 255).any()  # a caption
    x = plots._GAP + plots.TILE + plots._GAP  # the missing image's tile, centre
    y = plots._TITLE + 2 * plots._GAP + plots._CAPTION + plots.TILE + plots._CAPTION
    assert tuple(grid[y + plots.TILE // 2, x + plots.TILE // 2]) == (128, 128, 128)


def test_normalised_float_batches_are_shown_in_true_colours() -> None:
    data = StandInData(float_images=True)
    shown = to_display(data.val_x[0], data.mean, data.std)
    original = StandInData().val_x[0].permute(1, 2, 0).float().numpy() / 255
    assert shown.shape == (16, 16, 3) and shown.min() >= 0 and shown.max() <= 1
    assert abs(shown - original).max() < 1e-5


def test_bars_are_accuracy_per_bin_and_the_gap_to_confidence() -> None:
    bins = np.zeros((3, 16))
    bins[:, 12] = [10, 8.25, 5]  # 10 images at confidence ~0.825, 5 right: overconfident
    bins[:, 15] = [2, 2.0, 2]  # confidence exactly 1, both right: drawn in the last bin
    fig = plot_reliability(bins, "test")
    top, bottom = fig.axes
    accuracy = [p for p in top.patches if p.get_fill()]
    gaps = [p for p in top.patches if not p.get_fill()]
    assert [round(p.get_height(), 6) for p in accuracy] == [0.5, 1.0]
    assert [round(p.get_height(), 6) for p in gaps] == [0.325, 0.0]
    assert [p.get_height() for p in bottom.patches][12:] == [10, 0, 2]


def test_shares_plot_draws_percentages_per_group() -> None:
    fig = plot_shares(["a", "b", "c"], [6, 3, 1], [2.0, 2.0, 2.0], [1, 1, 8], epoch=1)
    ax = fig.axes[0]
    heights = [[round(r.get_height(), 1) for r in bars] for bars in ax.containers]
    assert heights == [[60.0, 30.0, 10.0], [33.3, 33.3, 33.3], [10.0, 10.0, 80.0]]
    assert "epoch 2" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dataset", "expected", "drawn"]


def test_past_30_classes_each_group_is_one_step_line_not_a_bar_per_class() -> None:
    # A thousand classes' grouped bars were 3,000 artists and seconds of drawing on the
    # artefact writer; one step line per group says the same in a tenth of the time.
    from matplotlib.patches import Rectangle, StepPatch

    n = 1000
    drawn = np.arange(n) % 7 + 1
    fig = plot_shares([f"c{i}" for i in range(n)], [5] * n, [1.0] * n, drawn, epoch=0)
    ax = fig.axes[0]
    steps = [p for p in ax.patches if isinstance(p, StepPatch)]
    assert not [p for p in ax.patches if isinstance(p, Rectangle)] and not ax.containers
    assert [p.get_label() for p in steps] == ["dataset", "expected", "drawn"]
    values, edges, _ = steps[2].get_data()
    assert np.allclose(values, 100 * drawn / drawn.sum()) and len(edges) == n + 1
    assert "class index" in ax.get_xlabel()
