"""tools/benchmarks/multilabel_digits.py: mosaics of real digits, labelled by the digits shown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.benchmarks.multilabel_digits import main


def test_mosaics_carry_the_digits_they_show(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    assert main([str(tmp_path / "a"), "--train", "6", "--val", "3", "--size", "16"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a" / "labels.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train"] * 6 + ["val"] * 3
    for r in rows:
        assert r["label"] == sorted(set(r["label"])) and set(r["label"]) <= set("0123456789")
        with Image.open(tmp_path / "a" / r["path"]) as img:
            pixels = np.asarray(img.convert("L"))
        assert img.size == (16, 16)
        quarters = [pixels[:8, :8], pixels[:8, 8:], pixels[8:, :8], pixels[8:, 8:]]
        assert sum(q.max() > 0 for q in quarters) >= len(r["label"])  # one tile per digit at least
    main([str(tmp_path / "b"), "--train", "2", "--val", "1", "--blank", "1"])
    blank = [json.loads(line) for line in (tmp_path / "b" / "labels.jsonl").read_text().splitlines()]
    assert all(r["label"] == [] for r in blank)  # every tile blank: images with no label
