"""trainer/io.py: file modes from the umask, hard links left alone, only our temp files cleaned."""

from __future__ import annotations

import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainer.io import (
    atomic_link,
    atomic_write_bytes,
    clean_stale_temp_files,
    is_temp_file,
    temp_path,
)


def _umask_now() -> int:
    """The process umask, read without setting it where Linux allows."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0)  # only this thread runs when the tests call it
    os.umask(mask)
    return mask


@pytest.fixture
def umask_027() -> Iterator[int]:
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes")
def test_concurrent_writes_give_umask_modes_and_never_touch_the_umask(
    tmp_path: Path, umask_027: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading the umask means setting it (os.umask); threads doing that at once can leave it
    # at 000, so the writes must never call it.
    calls: list[int] = []
    real_umask = os.umask

    def spy(mask: int) -> int:
        calls.append(mask)
        return real_umask(mask)

    monkeypatch.setattr(os, "umask", spy)
    start = threading.Barrier(8)

    def writer(i: int) -> None:
        start.wait()  # all threads write at once
        for j in range(10):
            atomic_write_bytes(tmp_path / f"f{i}_{j}", b"x")
        atomic_link(tmp_path / f"f{i}_0", tmp_path / f"link{i}")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    monkeypatch.undo()
    assert calls == []
    assert _umask_now() == umask_027
    modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {0o666 & ~umask_027}


def test_replacing_a_name_leaves_its_hard_links_alone(tmp_path: Path) -> None:
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_write_bytes(last, b"epoch 1")
    atomic_link(last, best)
    atomic_write_bytes(last, b"epoch 2")
    assert best.read_bytes() == b"epoch 1"
    atomic_link(last, best)
    atomic_write_bytes(best, b"rewritten best")
    assert last.read_bytes() == b"epoch 2"


def test_clean_stale_temp_files_removes_ours_everywhere_and_nothing_else(tmp_path: Path) -> None:
    ours = [
        temp_path(tmp_path / "metrics.csv"),
        temp_path(tmp_path / "plots" / "loss.png"),
        temp_path(tmp_path / "checkpoints" / "last.pt"),
        tmp_path / "checkpoints" / ".best.pt.4242.link.tmp",  # an older version's link temp
        tmp_path / ".model.onnx.k3x_9qaz.tmp",  # an older version's mkstemp name
    ]
    theirs = [
        tmp_path / ".notes.tmp",
        tmp_path / "notes.tmp",
        tmp_path / "plots" / ".draft.final.tmp",
        tmp_path / ".cache.tmp" / "keep.txt",  # a folder named like a temp file
    ]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert all(is_temp_file(p) for p in ours)
    assert clean_stale_temp_files(tmp_path) == len(ours)
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in theirs)


def test_json_files_are_strict_json_with_null_for_a_missing_number(tmp_path: Path) -> None:
    # A metric with no value (an AP without positives) is NaN in Python; JSON has no NaN, and
    # strict readers (a browser's JSON.parse, jq) refuse the file: it is written as null.
    import json

    from trainer.io import atomic_write_json

    path = tmp_path / "x.json"
    atomic_write_json(path, {"ap": [0.5, float("nan")], "inf": float("inf"), "n": 3, "s": "NaN"})
    text = path.read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "ap": [0.5, None], "inf": None, "n": 3, "s": "NaN"
    }  # fmt: skip
