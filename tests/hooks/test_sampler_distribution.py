from __future__ import annotations

import csv
from pathlib import Path

import pytest

from hooks.checkpoint import CheckpointHook
from hooks.sampler_distribution import (
    HEADER,
    SamplerDistributionHook,
    largest_gap,
)
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


def test_unwritable_out_dir_warns_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(
        lambda d: SamplerDistributionHook(d, console=quiet_console()), tmp_path, caplog
    )


def test_table_on_the_first_epoch_then_one_line_without_a_weighted_sampler(
    tmp_path: Path,
) -> None:
    console = quiet_console()
    run_fit([SamplerDistributionHook(tmp_path, console=console)], StandInData(sampler=None), 3)
    text = console_text(console)
    assert text.count("Sampled classes") == 1 and "Sampled classes, epoch 1" in text
    assert text.count("sampler: epoch 2 drew as planned") == 1 and "epoch 3" not in text


@pytest.mark.parametrize(("sampler", "tables"), [("balanced", 3), ("manual", 3), ("none", 1)])
def test_a_weighted_sampler_shows_the_table_every_epoch(
    tmp_path: Path, sampler: str, tables: int
) -> None:
    console = quiet_console()
    run_fit([SamplerDistributionHook(tmp_path, console=console)], StandInData(sampler=sampler), 3)
    assert console_text(console).count("Sampled classes") == tables


def test_a_draw_beyond_chance_brings_the_table_back(tmp_path: Path) -> None:
    console = quiet_console()
    hook = SamplerDistributionHook(tmp_path, console=console)
    names, dataset = ["a", "b"], [50, 50]
    hook.print_epoch(0, names, dataset, [50.0, 50.0], [50, 50], weighted=False)
    hook.print_epoch(1, names, dataset, [50.0, 50.0], [53, 47], weighted=False)  # 0.6 sd
    assert console_text(console).count("Sampled classes") == 1
    hook.print_epoch(2, names, dataset, [50.0, 50.0], [75, 25], weighted=False)  # 5 sd
    assert "Sampled classes, epoch 3" in console_text(console)
    assert largest_gap([50.0, 50.0], [53, 47]) == pytest.approx(0.6)  # sd = sqrt(100 x 0.5 x 0.5) = 5
    assert largest_gap([50.0, 50.0], [50, 50]) == 0.0


@pytest.mark.parametrize(("verbosity", "tables"), [("quiet", 0), ("normal", 1), ("verbose", 3)])
def test_verbosity_sets_how_many_tables(tmp_path: Path, verbosity: str, tables: int) -> None:
    console = quiet_console()
    hook = SamplerDistributionHook(tmp_path, console=console, verbosity=verbosity)  # type: ignore[arg-type]
    run_fit([hook], StandInData(sampler=None), 3)
    assert console_text(console).count("Sampled classes") == tables
    assert len(hook.rows) == 3 * 3  # the CSV rows are the same at every level
