"""CheckpointHook on resume: what a checkpoint says never deletes files outside the run's
checkpoints/ folder, and a resume from an older checkpoint never deletes later ones."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from hooks.checkpoint import CheckpointHook
from tests.conftest import make_engine
from trainer.checkpoint import save_checkpoint
from trainer.errors import CheckpointError


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("base") / "run"
    make_engine([CheckpointHook(run, top_k=1)], max_epochs=1).fit()
    return run


def test_a_crafted_top_k_name_deletes_nothing(
    one_epoch_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each crafted name heads the top-k list with a value the next epoch beats, so the
    resumed epoch would evict it, and delete the file it names."""
    outside = tmp_path / "precious.txt"
    crafted = {
        str(outside): outside,  # an absolute path
        "../args.json": tmp_path / "run" / "args.json",  # out of checkpoints/
        "sub/epoch_001.pt": tmp_path / "run" / "checkpoints" / "sub" / "epoch_001.pt",
        "last.pt": tmp_path / "run" / "checkpoints" / "last.pt",  # not a top-k file
    }
    for name, victim in crafted.items():
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(one_epoch_run, run)
        victim.parent.mkdir(parents=True, exist_ok=True)
        if not victim.exists():
            victim.write_text("keep me")
        last = run / "checkpoints" / "last.pt"
        ckpt = torch.load(last, weights_only=True)
        state = ckpt["hooks"]["CheckpointHook"]
        state["top"] = [[-1.0, name], *state["top"]]
        save_checkpoint(ckpt, last)
        with caplog.at_level(logging.WARNING, logger="trainer.hooks"):
            make_engine([CheckpointHook(run, top_k=1)], max_epochs=2).fit(resume=run)
        assert victim.is_file(), name
        assert any(repr(name) in r.getMessage() for r in caplog.records), name
        caplog.clear()
    assert outside.read_text() == "keep me"
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["state"]["history"]) == 2  # the resumed epoch ran and was saved


def test_malformed_top_k_entries_are_dropped(tmp_path: Path) -> None:
    hook = CheckpointHook(tmp_path)
    hook.load_state_dict(
        {"best_epoch": "x", "top": [[0.5, "epoch_003.pt"], ["a", "epoch_001.pt"], [1.0], 7]}
    )
    assert hook.top == [(0.5, "epoch_003.pt")] and hook.best_epoch is None


@pytest.mark.parametrize("top_k", [3, 0])
def test_resuming_an_older_checkpoint_of_the_run_deletes_nothing(
    tmp_path: Path, top_k: int
) -> None:
    """With top-k files the older checkpoint is one of them; without, only last.pt tells that
    the run went on (the older one is a copy kept outside the run)."""
    run, older = tmp_path / "run", tmp_path / "older.pt"
    ckpts = run / "checkpoints"
    make_engine([CheckpointHook(run, top_k=top_k)], max_epochs=1).fit()
    shutil.copy(ckpts / "last.pt", older)
    make_engine([CheckpointHook(run, top_k=top_k)], max_epochs=3).fit(resume=run)
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    if top_k:
        assert {"epoch_000.pt", "epoch_002.pt"} <= set(before)
        older = ckpts / "epoch_000.pt"
    engine = make_engine([CheckpointHook(run, top_k=top_k)], max_epochs=2)
    with pytest.raises(CheckpointError, match="--out NEW_FOLDER") as info:
        engine.fit(resume=older)
    assert str(ckpts / "last.pt") in str(info.value)
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before
