"""Class names that are awkward or unsafe as file names never become paths; the run writes
nothing outside --out and never changes the data."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_CLI, make_tree, tree_digest
from tools import train
from trainer.data.sampler import TrackingWeightedRandomSampler

NAMES = {"con": 6, "naïve café": 6, "new\nline": 6, "a$b[c]<i>": 6, "nul.txt": 6}


def test_awkward_class_names_never_become_paths(tmp_path: Path, monkeypatch) -> None:
    data = make_tree(tmp_path / "data", NAMES, size=(16, 16))
    before = tree_digest(data)
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
            *FAST_CLI,
            "--no-export",
        ]
    )
    assert code == 0
    written = [p.relative_to(out) for p in out.rglob("*")]
    parts = {part for p in written for part in p.parts} | {Path(p).stem for p in written}
    for name in NAMES:
        assert name not in parts and Path(name).stem not in parts, (name, sorted(parts))
    assert not any("\n" in part or "<" in part or "$" in part for part in parts)
    assert tree_digest(data) == before  # user data untouched
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


BRACKETS = {"[red]": 4, "[bold]x": 4, "a[b]c": 4}


def test_brackets_in_class_names_and_paths_print_literally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_tree(tmp_path / "data[x]", BRACKETS, size=(16, 16))
    (tmp_path / "run[").mkdir()
    out = tmp_path / "run[" / "]x"  # the path reads ".../run[/]x": a closing tag to rich
    # pytest's log capture holds the root logger; without handlers, main() installs its own
    # RichHandler as on a terminal. monkeypatch puts pytest's back afterwards.
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: each path stays on one line
    loud = [a for a in FAST_CLI if a != "--quiet"]  # --quiet drops the tables and info lines
    argv = ["--data", str(data), "--out", str(out), "--epochs", "1", *loud]
    assert train.main([*argv, "--no-report", "--no-samples", "--no-history-plots"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"run folder {out}" in captured.err  # a log line, through the RichHandler
    assert f"run folder: {out}" in captured.err  # the closing summary, a rich console line
    assert f"exported {out / 'model.onnx'}" in captured.err
    for name in BRACKETS:
        assert name in captured.out  # the class-distribution table
