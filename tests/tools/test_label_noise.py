"""tools/benchmarks/label_noise.py: the mislabelled copy of a tree and its precision at k."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.conftest import make_tree, tree_digest
from tools.benchmarks.label_noise import main, score


def test_make_moves_a_share_to_other_classes_and_score_counts_the_top_k(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": 10, "b": 10}, size=(4, 4))
    before = tree_digest(src)
    copy, run = tmp_path / "copy", tmp_path / "run"
    assert main(["make", str(src), str(copy), "--fraction", "0.2", "--seed", "1"]) == 0
    assert tree_digest(src) == before  # the source is only read
    moved = json.loads((copy / "moved.json").read_text(encoding="utf-8"))
    assert len(moved) == 4
    for path in map(Path, moved):  # in the other class's folder, gone from its own
        cls = path.name.split("_")[1]
        assert path.is_file() and path.parent.name != cls
        assert not (copy / "train" / cls / path.name.split("_", 2)[2]).exists()
    others = sorted(str(p) for p in (copy / "train").rglob("*.*") if str(p) not in moved)
    run.mkdir()
    with open(run / "label_issues.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "score"])
        for p in [moved[0], others[0], moved[1], moved[2], moved[3]]:  # 3 of the top 4
            w.writerow([p, 0])
    assert score(copy, run) == 0.75
    (run / "label_issues.csv").rename(run / "label_issues_cv.csv")  # tools/label_issues.py's
    assert score(copy, run, "label_issues_cv.csv") == 0.75
