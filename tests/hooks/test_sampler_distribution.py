from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hooks.checkpoint import CheckpointHook
from hooks.sampler_distribution import HEADER, SamplerDistributionHook, plot_shares
from tests.conftest import (
    StandInData,
    assert_survives_unwritable,
    console_text,
    png_size,
    quiet_console,
    run_fit,
)
from trainer.engine import Engine
from trainer.models import build_model


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HEADER
        return list(reader)


def test_counts_what_the_balanced_sampler_drew(tmp_path: Path, data: StandInData) -> None:
    console = quiet_console()
    hook = SamplerDistributionHook(tmp_path, console=console)
    run_fit([hook], data, epochs=2)
    rows = _read(tmp_path / "sampler_distribution.csv")
    assert len(rows) == 2 * 3
    assert [(r["epoch"], r["class_idx"], r["class_name"]) for r in rows[:3]] == [
        ("0", "0", "cat"),
        ("0", "1", "dog"),
        ("0", "2", "bird"),
    ]
    for epoch in ("0", "1"):
        this = [r for r in rows if r["epoch"] == epoch]
        assert sum(int(r["drawn"]) for r in this) == 22  # every training sample slot, once
        assert [int(r["dataset_count"]) for r in this] == [12, 7, 3]
        assert [float(r["expected"]) for r in this] == pytest.approx([22 / 3] * 3, abs=1e-3)
    assert data.sampler is not None
    # The hook's own count (from the batches) agrees with the sampler's record.
    assert [int(r["drawn"]) for r in rows[3:]] == data.sampler.class_counts
    assert "Sampled classes, epoch 2" in console_text(console)
    w, h = png_size(tmp_path / "plots" / "sampler_distribution.png")
    assert w >= 600 and h >= 400


def test_without_a_sampler_each_image_is_drawn_once(tmp_path: Path) -> None:
    hook = SamplerDistributionHook(tmp_path, console=quiet_console())
    run_fit([hook], StandInData(sampler=None), epochs=1)
    assert [r[3:] for r in hook.rows] == [[12, 12.0, 12], [7, 7.0, 7], [3, 3.0, 3]]


def test_resume_continues_the_file(tmp_path: Path, data: StandInData) -> None:
    run_fit(
        [SamplerDistributionHook(tmp_path, console=quiet_console()), CheckpointHook(tmp_path)],
        data,
        epochs=1,
    )
    hook = SamplerDistributionHook(tmp_path, console=quiet_console())
    engine = Engine(
        build_model("small_cnn", 3),
        data,
        max_epochs=2,
        device="cpu",
        hooks=[hook, CheckpointHook(tmp_path)],
    )
    engine.fit(resume=tmp_path)
    rows = _read(tmp_path / "sampler_distribution.csv")
    assert [r["epoch"] for r in rows] == ["0"] * 3 + ["1"] * 3


def test_table_is_capped_for_many_classes() -> None:
    hook = SamplerDistributionHook(".", max_rows=5)
    classes = [f"c{i}" for i in range(40)]
    drawn = [10] * 40
    drawn[7] = 40
    table = hook._table(0, classes, [10] * 40, [10.0] * 40, drawn)
    assert table.row_count == 5 and "35 more classes" in str(table.caption)


def test_unwritable_out_dir_warns_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(
        lambda d: SamplerDistributionHook(d, console=quiet_console()), tmp_path, caplog
    )


def test_shares_plot_draws_percentages_per_group() -> None:
    fig = plot_shares(["a", "b", "c"], [6, 3, 1], [2.0, 2.0, 2.0], [1, 1, 8], epoch=1)
    ax = fig.axes[0]
    heights = [[round(r.get_height(), 1) for r in bars] for bars in ax.containers]
    assert heights == [[60.0, 30.0, 10.0], [33.3, 33.3, 33.3], [10.0, 10.0, 80.0]]
    assert "epoch 2" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["dataset", "expected", "drawn"]
