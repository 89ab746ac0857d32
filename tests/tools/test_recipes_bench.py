"""tools/benchmarks/recipes_bench.py: one preset, one seed, on the digits set (skipped without
scikit-learn, which only the bench needs)."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.benchmarks import recipes_bench as bench


@pytest.fixture(autouse=True)
def _unfreeze_gc() -> Iterator[None]:
    yield
    gc.unfreeze()  # tools/train.py freezes the collector


def test_the_bench_trains_each_preset_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sklearn")
    # Scale 0.05: quick's 5 epochs round to 0 and are clamped to 1, scratch's 2 x 20 make 2
    # (1 had its recipe not doubled the epochs): 3 short epochs in all.
    argv = ["--datasets", "digits", "--presets", "quick", "scratch", "--seeds", "0",
            "--epoch-scale", "0.05", "--workers", "0", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0
    tree = tmp_path / "digits_tree"
    assert sorted(p.name for p in (tree / "train").iterdir()) == [str(d) for d in range(10)]
    assert sum(1 for _ in (tree / "val").rglob("*.png")) == 360
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["preset"], r["epochs"]) for r in results] == [("quick", 1), ("scratch", 2)]
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in results)
    out = capsys.readouterr().out
    assert "| quick |" in out and "| scratch |" in out
