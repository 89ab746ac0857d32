"""The default hooks at 1,000 classes: short terminal tables, small files, a light report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hooks import default_hooks
from tests.conftest import StandInData, run_fit


def test_default_hooks_at_a_thousand_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 1000
    names = [f"n{i:08d} a class name of the usual length" for i in range(n)]
    data = StandInData(names, [2 + i % 3 for i in range(n)], [2] * n, batch_size=200)
    run_fit(default_hooks(tmp_path, progress=False, export=False), data, epochs=1)
    # The model table, the class distribution and the sampler's table, each at most 30
    # classes long; at 80 columns a long name takes two lines. A line per class: 2,000.
    printed = capsys.readouterr().out.splitlines()
    assert 60 < len(printed) <= 180
    files = list((tmp_path / "plots" / "confusion_matrix").glob("epoch_000.*"))
    assert sorted(f.suffix for f in files) == [".npz", ".png"]
    assert sum(f.stat().st_size for f in files) <= 1_000_000
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert len(page.encode()) < 5_000_000
    data_section = page[page.index('<section id="data">') :]
    data_section = data_section[: data_section.index("</section>")]
    assert len(re.findall(r'<tr><td class="t">n\d{8}', data_section)) == 30
    assert '970 more in <a href="class_distribution.csv">' in data_section
    # Every class is thin (under 10 training images): ten are named, the rest counted.
    assert data_section.count(" a class name of the usual length (") == 10
    assert "and 990 more (dataset_stats.json)" in data_section
    assert "plots/confusion_matrix/epoch_000.npz" in page
    assert page.count('href="class_distribution.csv"') == 2  # here and in the file list
