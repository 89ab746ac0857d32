"""Killed at random moments (during saves too), a run always leaves a loadable last.pt and
resumes; a full disk or an unwritable run folder is a clear error that keeps what was saved."""

from __future__ import annotations

import errno
import json
import multiprocessing
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_CLI, NO_OUTPUTS, make_tree
from tests.tools import crash_child
from tests.tools.tiny_run import load_tool

train = load_tool("train")


def _start(ctx, out: Path, max_epochs: int):  # type: ignore[no-untyped-def]
    ready = ctx.Event()
    proc = ctx.Process(target=crash_child.train_until_killed, args=(str(out), max_epochs, ready))
    proc.start()
    assert ready.wait(60), "the training process did not start"
    return proc


def test_sigkill_at_random_moments_never_corrupts_last_pt(tmp_path: Path) -> None:
    # A fork server that has imported torch and the trainer starts each child in well under a
    # second, so the 20 kills land in training and saving, not in `import torch`.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "tests.tools.crash_child"])
    out = tmp_path / "run"
    rng = random.Random(0)
    epochs_seen = mid_save = 0
    for _ in range(20):
        proc = _start(ctx, out, 10_000)
        time.sleep(rng.uniform(0.05, 0.8))
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.join(30)
        assert proc.exitcode == -signal.SIGKILL
        mid_save += bool(list((out / "checkpoints").glob(".*.tmp")))
        last = out / "checkpoints" / "last.pt"
        if last.exists():
            ckpt = torch.load(last, weights_only=True)  # whole, never half-written
            epochs = len(ckpt["state"]["history"])
            assert epochs >= epochs_seen  # a resumed run never goes back
            epochs_seen = epochs
    assert epochs_seen > 0, "no run got as far as its first checkpoint"
    print(f"{mid_save} of 20 kills landed inside a checkpoint write")
    assert mid_save >= 1, "no kill landed inside a checkpoint write"
    # The next start cleans the temp files that kills left, and resumes to the end.
    proc = _start(ctx, out, epochs_seen + 1)
    proc.join(120)
    assert proc.exitcode == 0
    assert not list((out / "checkpoints").glob(".*.tmp"))
    final = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert len(final["state"]["history"]) == epochs_seen + 1


ARGS = [*FAST_CLI, *NO_OUTPUTS]


def test_full_disk_is_a_clear_error_and_keeps_the_last_checkpoint(
    tiny_tree: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import hooks.checkpoint as checkpoint_hook
    from trainer.checkpoint import save_checkpoint

    calls = {"n": 0}

    def flaky_save(ckpt, path):
        calls["n"] += 1
        if calls["n"] > 1:  # epoch 1 writes last.pt (best.pt links it); then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_checkpoint(ckpt, path)

    monkeypatch.setattr(checkpoint_hook, "save_checkpoint", flaky_save)
    out = tmp_path / "run"
    code = train.main(["--data", str(tiny_tree), "--out", str(out), "--epochs", "3", *ARGS])
    assert code == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(out / "checkpoints") in err
    assert "Traceback" not in err
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["state"]["history"]) == 1


def test_unwritable_run_folder_is_a_clear_error(tiny_tree: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    code = train.main(["--data", str(tiny_tree), "--out", str(blocker / "run"), *ARGS])
    assert code == 2
    err = capsys.readouterr().err
    assert str(blocker / "run") in err and "writable --out" in err


def test_data_report_lists_unusable_and_ignored_files(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "data", {"a": 30, "b": 30}, size=(12, 12))
    (root / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "train" / "a" / "empty.png").write_bytes(b"")
    (root / "train" / "b" / "notes.txt").write_text("hello")
    out = tmp_path / "run"
    assert train.main(["--data", str(root), "--out", str(out), "--epochs", "1", *ARGS]) == 0
    report = json.loads((out / "data_report.json").read_text())
    bad = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert set(bad) == {"broken.jpg", "empty.png"} and all(bad.values())
    assert [Path(p).name for p in report["ignored_files"]] == ["notes.txt"]
    assert report["class_counts"]["train"] == [30, 30]


@pytest.mark.parametrize("fraction", ["0.01"])
def test_too_many_bad_files_aborts_with_the_list(tmp_path: Path, fraction: str, capsys) -> None:
    root = make_tree(tmp_path / "data", {"a": 10, "b": 10}, size=(12, 12))
    (root / "train" / "a" / "broken.jpg").write_bytes(b"garbage")
    out = tmp_path / "run"
    code = train.main(
        ["--data", str(root), "--out", str(out), "--max-bad-fraction", fraction, *ARGS]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "--max-bad-fraction" in err
