"""Class names that are awkward or unsafe as file names never become paths; the run writes
nothing outside --out and never changes the data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from tests.conftest import make_tree
from tests.tools.tiny_run import load_tool
from trainer.sampler import TrackingWeightedRandomSampler

train = load_tool("train")

NAMES = {"con": 6, "naïve café": 6, "new\nline": 6, "a$b[c]<i>": 6, "nul.txt": 6}


def _hash_tree(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_awkward_class_names_never_become_paths(tmp_path: Path, monkeypatch) -> None:
    data = make_tree(tmp_path / "data", NAMES, size=(16, 16))
    before = _hash_tree(data)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "run"
    code = train.main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--img-size",
            "16",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--model",
            "small_cnn",
            "--device",
            "cpu",
            "--quiet",
            "--no-export",
        ]
    )
    assert code == 0
    written = [p.relative_to(out) for p in out.rglob("*")]
    parts = {part for p in written for part in p.parts} | {Path(p).stem for p in written}
    for name in NAMES:
        assert name not in parts and Path(name).stem not in parts, (name, sorted(parts))
    assert not any("\n" in part or "<" in part or "$" in part for part in parts)
    assert _hash_tree(data) == before  # user data untouched
    assert list(work.iterdir()) == []  # nothing written outside --out
    assert (out / "report.html").is_file() and (out / "metrics.csv").is_file()
    assert os.path.isdir(out / "plots" / "confusion_matrix")


def test_balanced_sampler_handles_1_to_1000() -> None:
    targets = [0] * 1000 + [1]
    sampler = TrackingWeightedRandomSampler(targets, 2, mode="balanced", seed=0)
    drawn = torch.zeros(2)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        list(sampler)
        drawn += torch.tensor(sampler.class_counts, dtype=torch.float32)
    assert abs(drawn[1].item() / drawn.sum().item() - 0.5) < 0.03
