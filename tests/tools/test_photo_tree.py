"""tools/benchmarks/photo_tree.py: photo-sized trees from scikit-image's photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.benchmarks.photo_tree import main, parse_size

pytest.importorskip("skimage")


def test_writes_distinct_jpeg_variants_per_class_and_refuses_a_full_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tree"
    argv = [str(out), "--size", "40x30", "--classes", "2", "--per-class", "3",
            "--val-per-class", "1"]  # fmt: skip
    assert main(argv) == 0
    files = sorted(out.rglob("*.jpg"))
    assert [f.relative_to(out).parts[:2] for f in files] == [
        ("train", "astronaut")] * 3 + [("train", "coffee")] * 3 + [
        ("val", "astronaut"), ("val", "coffee")]  # fmt: skip
    arrays = []
    for f in files:
        with Image.open(f) as img:
            assert img.format == "JPEG" and img.size == (40, 30)
            arrays.append(np.asarray(img.convert("RGB"), dtype=np.int16))
    # Variants, not copies: every pair of images of a class differs clearly.
    for a, b in [(0, 1), (0, 2), (1, 2), (3, 4)]:
        assert np.abs(arrays[a] - arrays[b]).mean() > 5
    assert main(argv) == 2  # never writes into a folder that has files
    assert "exists and is not empty" in capsys.readouterr().err
    assert parse_size("12mp") == (4032, 3024) and parse_size("imagenet") == (500, 375)
