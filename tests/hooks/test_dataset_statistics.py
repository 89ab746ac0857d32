from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import pytest

from hooks.dataset_statistics import DatasetStatisticsHook
from tests.conftest import (
    StandInData,
    assert_survives_unwritable,
    console_text,
    png_size,
    quiet_console,
    run_fit,
)


def test_stats_match_the_data_and_flag_thin_classes(
    tmp_path: Path, data: StandInData, caplog: pytest.LogCaptureFixture
) -> None:
    console = quiet_console()
    hook = DatasetStatisticsHook(tmp_path, few_threshold=5, console=console)
    with caplog.at_level(logging.WARNING, logger="trainer.hooks"):
        run_fit([hook], data, epochs=1)
    doc = json.loads((tmp_path / "dataset_stats.json").read_text())
    assert doc == hook.stats
    # The stand-in has no test images, so that split is left out.
    assert set(doc["splits"]) == {"train", "val"}
    train, val = doc["splits"]["train"], doc["splits"]["val"]
    assert train["counts"] == {"cat": 12, "dog": 7, "bird": 3}
    assert val["counts"] == {"cat": 5, "dog": 4, "bird": 3}
    assert (train["total"], val["total"]) == (22, 12)
    assert train["imbalance_ratio"] == 4.0
    assert val["imbalance_ratio"] == pytest.approx(5 / 3, abs=1e-4)
    assert doc["few_images"] == [{"class_idx": 2, "class_name": "bird", "count": 3}]
    assert "bird" in caplog.text and "fewer than 5" in caplog.text
    text = console_text(console)
    assert "Class distribution" in text and "54.5" in text  # cat's share of train, in %
    assert "4.0x" in text and "warning: 1 class(es)" in text
    w, h = png_size(tmp_path / "plots" / "class_distribution.png")
    assert w >= 600 and h >= 400


def test_a_class_missing_from_a_split_has_no_ratio(tmp_path: Path) -> None:
    data = StandInData(val_counts=[4, 0, 2])
    hook = DatasetStatisticsHook(tmp_path, console=quiet_console())
    run_fit([hook], data, epochs=1)
    assert hook.stats["splits"]["val"]["imbalance_ratio"] is None
    assert hook.stats["splits"]["val"]["counts"]["dog"] == 0
    # The default threshold (10) flags dog (7) and bird (3).
    assert [f["class_idx"] for f in hook.stats["few_images"]] == [1, 2]


def test_unwritable_out_dir_warns_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(
        lambda d: DatasetStatisticsHook(d, few_threshold=0, console=quiet_console()),
        tmp_path,
        caplog,
    )


def test_many_classes_print_a_summary_and_write_every_class_to_csv(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 1000
    train = [2 + i % 5 for i in range(n)]
    train[123], train[456] = 1, 40  # the smallest and the largest class
    data = StandInData([f"class{i}" for i in range(n)], train, [1] * n, batch_size=250)
    console = quiet_console()
    hook = DatasetStatisticsHook(tmp_path, console=console)
    with caplog.at_level(logging.WARNING, logger="trainer.hooks"):
        run_fit([hook], data, epochs=1)
    text = console_text(console)
    assert len(text.splitlines()) <= 50
    # 15 smallest from the smallest up, then 15 largest up to the largest.
    names = re.findall(r"│ +\d+ │ (class\d+)", text)
    assert len(names) == 30 and names[0] == "class123" and names[-1] == "class456"
    assert text.count("├") == 2  # a rule between the two halves, and the footer's
    assert str(sum(train)) in text and "40.0x" in text  # the totals and the imbalance
    words = " ".join(text.split())  # the captions wrap at the table's width
    assert "970 more classes in class_distribution.csv" in words
    # Every class but one is thin here: ten are named, the rest counted.
    assert "class9 and 989 more (dataset_stats.json)" in words
    warnings = [r.getMessage() for r in caplog.records if r.name == "trainer.hooks"]
    assert len(warnings) == 11 and "989 more classes have fewer than 10" in warnings[-1]
    with (tmp_path / "class_distribution.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and list(rows[0]) == ["class_idx", "class_name", "train", "val"]
    assert rows[456] == {"class_idx": "456", "class_name": "class456", "train": "40", "val": "1"}
