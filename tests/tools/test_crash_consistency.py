"""Killed at random moments (during saves too), a run always leaves a loadable last.pt and
resumes; a full disk or an unwritable run folder is a clear error that keeps what was saved."""

from __future__ import annotations

import errno
import json
import multiprocessing
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_CLI, NO_OUTPUTS, make_tree
from tests.tools import crash_child
from tools import train


def _start(ctx, out: Path, max_epochs: int):  # type: ignore[no-untyped-def]
    ready = ctx.Event()
    proc = ctx.Process(target=crash_child.train_until_killed, args=(str(out), max_epochs, ready))
    proc.start()
    assert ready.wait(60), "the training process did not start"
    return proc


def test_sigkill_at_random_moments_never_corrupts_last_pt(tmp_path: Path) -> None:
    # A fork server that has imported torch and the trainer starts each child in well under a
    # second, so the 20 kills land in training and saving, not in `import torch` (nor in
    # torchmetrics', which the first validation imports).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torchmetrics.classification", "tests.tools.crash_child"])
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
    assert re.search(r"has [\d.]+ [KMGT]?B free", err) and "Traceback" not in err
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


# Scores per epoch for best.pt and a top-2: the best moves at epochs 1 and 3; epochs 0 and 2
# leave the top-2, so every kind of write happens: last.pt, its links, removals.
SCORES = [1.0, 3.0, 2.0, 4.0, 0.0]
WRITES = 15  # file operations of the 5 epoch ends (save, link, remove)


class Crash(Exception):
    """Where the process dies."""


def _crash_at(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the n-th file operation of the checkpoint writes fail, and only that one."""
    import hooks.checkpoint as checkpoint_hook

    done = [0]

    def counted(fn):  # type: ignore[no-untyped-def]
        def op(*args, **kwargs):  # type: ignore[no-untyped-def]
            done[0] += 1
            if done[0] - 1 == n:
                raise Crash(f"file operation {n}")
            return fn(*args, **kwargs)

        return op

    for name in ("save_checkpoint", "atomic_link", "remove_file"):
        monkeypatch.setattr(checkpoint_hook, name, counted(getattr(checkpoint_hook, name)))


def _epoch_in(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["state"]["epoch"])


def _assert_files_agree_with_state(folder: Path, scores: list[float], top_k: int) -> None:
    """best.pt and the epoch_XXX.pt files are exactly what last.pt's history calls for."""
    n = len(torch.load(folder / "last.pt", weights_only=True)["state"]["history"])
    by_score = sorted(range(n), key=lambda e: scores[e], reverse=True)
    top = by_score[:top_k]
    assert sorted(p.name for p in folder.glob("epoch_*.pt")) == sorted(
        f"epoch_{e:03d}.pt" for e in top
    )
    for e in top:
        assert _epoch_in(folder / f"epoch_{e:03d}.pt") == e
    assert _epoch_in(folder / "best.pt") == by_score[0]


def _fit(out: Path, scores: list[float], *, top_k: int = 2, resume: Path | None = None):  # type: ignore[no-untyped-def]
    from hooks.checkpoint import CheckpointHook
    from tests.conftest import make_engine
    from tests.trainer.test_checkpoint import _Score

    hooks = [_Score(scores), CheckpointHook(out, monitor="score", top_k=top_k)]
    engine = make_engine(hooks, max_epochs=len(scores), sanity_steps=0, data=_small_data())
    engine.fit(resume=resume)
    return engine


def _small_data():  # type: ignore[no-untyped-def]
    from tests.conftest import StandInData

    return StandInData.sized(16, batch_size=16)


@pytest.mark.parametrize("n", range(WRITES))
def test_best_and_top_k_agree_with_the_state_after_a_crash_at_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    with monkeypatch.context() as m:
        _crash_at(m, n)
        with pytest.raises(Crash):
            _fit(tmp_path, SCORES)
    folder = tmp_path / "checkpoints"
    resume = tmp_path if (folder / "last.pt").exists() else None
    _fit(tmp_path, SCORES, resume=resume)
    _assert_files_agree_with_state(folder, SCORES, top_k=2)


def test_no_crash_writes_as_many_files_as_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # WRITES above must cover every write, or the crash test would miss the last ones.
    _crash_at(monkeypatch, WRITES)
    _fit(tmp_path, SCORES)
    monkeypatch.undo()
    _crash_at(monkeypatch, WRITES - 1)
    with pytest.raises(Crash):
        _fit(tmp_path / "again", SCORES)


def test_resume_from_an_earlier_epoch_or_with_a_smaller_top_k(tmp_path: Path) -> None:
    run, branch = tmp_path / "run", tmp_path / "branch"
    _fit(run, SCORES[:4])  # best: epoch 3; top-2: epochs 3 and 1
    # Back to epoch 1, in a new folder (the run's own refuses it, its later files would go).
    later = [*SCORES[:2], 2.5, 2.2, 2.1]  # epoch 0 (its file is gone) stays out of the top
    _fit(branch, later, resume=run / "checkpoints" / "epoch_001.pt")
    _assert_files_agree_with_state(branch / "checkpoints", later, top_k=2)
    _assert_files_agree_with_state(run / "checkpoints", SCORES[:4], top_k=2)
    longer = [*later, 0.0]
    _fit(branch, longer, top_k=1, resume=branch)
    _assert_files_agree_with_state(branch / "checkpoints", longer, top_k=1)
