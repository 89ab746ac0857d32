from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hooks.most_confused import MostConfusedHook, most_confused
from trainer.artifacts import ArtifactWriter
from trainer.state import EngineState

CLASSES = ["a", "b", "c"]
# Rows are true classes: 6 "c" images predicted "b", 3 "a" predicted "b", 2 and 1 "b" ones.
MATRIX = torch.tensor([[5, 3, 0], [1, 4, 2], [0, 6, 1]])


def _pairs(rows: list[dict[str, object]]) -> list[tuple[object, ...]]:
    return [(r["true"], r["predicted"], r["count"], r["share"]) for r in rows]


def test_pairs_largest_first_with_share_of_the_true_class() -> None:
    assert _pairs(most_confused(MATRIX, CLASSES)) == [
        ("c", "b", 6, round(6 / 7, 4)),
        ("a", "b", 3, round(3 / 8, 4)),
        ("b", "c", 2, round(2 / 7, 4)),
        ("b", "a", 1, round(1 / 7, 4)),
    ]
    assert _pairs(most_confused(MATRIX, CLASSES, min_count=2))[-1] == ("b", "c", 2, 0.2857)
    assert len(most_confused(MATRIX, CLASSES, top=2)) == 2
    first = most_confused(MATRIX, CLASSES)[0]
    assert (first["true_index"], first["predicted_index"]) == (2, 1)
    # A perfect model confuses nothing; empty cells are never listed.
    assert most_confused(torch.eye(3, dtype=torch.int64) * 4, CLASSES) == []


def test_hook_writes_the_csv_and_keeps_the_pairs(tmp_path: Path) -> None:
    hook = MostConfusedHook(tmp_path, top=3)
    writer = ArtifactWriter(background=False)
    state = EngineState(phase="sanity", epoch=2, step=40, confusion_matrix=MATRIX)
    engine = SimpleNamespace(state=state, data=SimpleNamespace(classes=CLASSES), artifacts=writer)
    hook.on_validation_epoch_end(engine)  # type: ignore[arg-type]
    assert hook.pairs == [] and not hook.path.exists()  # the sanity check is left out
    state.phase = "val"
    hook.on_validation_epoch_end(engine)  # type: ignore[arg-type]
    writer.flush()
    assert _pairs(hook.pairs) == _pairs(most_confused(MATRIX, CLASSES, top=3))
    with open(tmp_path / "most_confused.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "step", "true_index", "true", "predicted_index", "predicted",
                       "count", "share"]  # fmt: skip
    assert rows[1] == ["2", "40", "2", "c", "1", "b", "6", "0.8571"]
    assert len(rows) == 4


def test_top_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="top must be >= 1"):
        MostConfusedHook(tmp_path, top=0)
