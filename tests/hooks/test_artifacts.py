"""The artefact writer thread: order, flush, failures as warnings, and the inline switch."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hooks import _artifacts
from hooks._artifacts import flush, submit


def test_jobs_run_in_order_off_the_caller_thread(tmp_path: Path) -> None:
    ran: list[tuple[int, str]] = []
    for i in range(5):
        submit(lambda i=i: ran.append((i, threading.current_thread().name)), tmp_path / f"{i}")
    flush()
    assert [i for i, _ in ran] == list(range(5))
    assert {name for _, name in ran} == {"artifact-writer"}


def test_a_failing_job_warns_naming_the_file_and_later_jobs_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise ValueError("boom")

    ran: list[int] = []
    submit(fail, tmp_path / "bad.png")
    submit(lambda: ran.append(1), tmp_path / "good.png")
    flush()
    assert ran == [1]
    assert "bad.png" in caplog.text and "boom" in caplog.text


def test_sync_runs_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_artifacts, "SYNC", True)
    names: list[str] = []
    submit(lambda: names.append(threading.current_thread().name), tmp_path / "x")
    assert names == [threading.current_thread().name]
