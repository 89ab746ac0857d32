"""tools/benchmarks/near_duplicates.py: hidden altered copies, found, missed and false pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools.benchmarks import near_duplicates as bench
from trainer.data.demo import draw_shape


def shapes_tree(root: Path) -> Path:
    for split, n in (("train", 3), ("val", 4)):
        for c, shape in enumerate(("star", "ring")):
            (root / split / shape).mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng(100 * c + 10 * i + (split == "val"))
                draw_shape(shape, rng).save(root / split / shape / f"{i}.png")
    return root


def test_hides_one_copy_per_kind_and_scores_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = shapes_tree(tmp_path / "src")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    count = len(bench.KINDS)
    assert bench.main([str(src), "--count", str(count), "--work", str(tmp_path / "w")]) == 0
    hidden = json.loads((tmp_path / "w/copy" / bench.HIDDEN_JSON).read_text())
    assert sorted(h["kind"] for h in hidden) == sorted(bench.KINDS)
    assert all(Path(h["copy"]).parent.parent.name == "train" for h in hidden)
    out = capsys.readouterr().out
    assert "resize50         found 1/1" in out and "false pairs: 0" in out
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # source only read


def test_score_counts_found_and_false_pairs() -> None:
    hidden = [{"val": "v1", "copy": "c1", "kind": "jpeg75"}, {"val": "v2", "copy": "c2", "kind": "crop4"}]
    pairs = [{"files": [{"path": "c1"}, {"path": "v1"}]}, {"files": [{"path": "x"}, {"path": "v2"}]}]
    result = bench.score(hidden, pairs)
    assert result["found"]["jpeg75"] == 1 and result["found"]["crop4"] == 0
    assert result["false"] == [["x", "v2"]]
