"""The run's artefact writer: order, replacement, flush, failures as warnings, one per engine."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import run_fit
from trainer.artifacts import WRITER_NICE, ArtifactWriter
from trainer.hook import Hook


def _blocked(writer: ArtifactWriter, tmp_path: Path) -> threading.Event:
    """Occupy the writer with a job that waits for the returned event."""
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(30)

    writer.submit(block, tmp_path / "block")
    assert started.wait(30)
    return release


def test_jobs_run_in_order_off_the_caller_thread(tmp_path: Path) -> None:
    writer = ArtifactWriter()
    ran: list[tuple[int, str]] = []
    for i in range(5):
        writer.submit(lambda i=i: ran.append((i, threading.current_thread().name)), tmp_path / f"{i}")
    writer.flush()
    assert [i for i, _ in ran] == list(range(5))
    assert {name for _, name in ran} == {"artifacts"}
    assert writer.cpu_seconds >= 0.0


def test_a_failing_job_warns_naming_the_file_and_later_jobs_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def fail() -> None:
        raise ValueError("boom")

    writer = ArtifactWriter()
    ran: list[int] = []
    writer.submit(fail, tmp_path / "bad.png")
    writer.submit(lambda: ran.append(1), tmp_path / "good.png")
    writer.flush()
    assert ran == [1]
    assert "bad.png" in caplog.text and "boom" in caplog.text


def test_inline_writer_runs_jobs_where_they_are_submitted(tmp_path: Path) -> None:
    names: list[str] = []
    ArtifactWriter(background=False).submit(
        lambda: names.append(threading.current_thread().name), tmp_path / "x"
    )
    assert names == [threading.current_thread().name]


def test_a_replacing_job_drops_the_queued_older_one_and_runs_after_everything_before_it(
    tmp_path: Path,
) -> None:
    writer = ArtifactWriter()
    release = _blocked(writer, tmp_path)  # everything below stays queued
    ran: list[str] = []
    loss, report = tmp_path / "loss.png", tmp_path / "report.html"
    writer.submit(lambda: ran.append("loss 1"), loss, replace=True)
    writer.submit(lambda: ran.append("epoch_001.png"), tmp_path / "epoch_001.png")
    writer.submit(lambda: ran.append("report 1"), report, replace=True)
    writer.submit(lambda: ran.append("loss 2"), loss, replace=True)
    writer.submit(lambda: ran.append("tb 1"), tmp_path / "tb")  # not replacing: both run
    writer.submit(lambda: ran.append("tb 2"), tmp_path / "tb")
    writer.submit(lambda: ran.append("report 2"), report, replace=True)
    release.set()
    writer.flush()
    # The newest loss plot and report run once each, and each after every job submitted before
    # it: the last report sees every file asked for before it (a writer that lags must not
    # leave the final page drawn from an older epoch's files).
    assert ran == ["epoch_001.png", "loss 2", "tb 1", "tb 2", "report 2"]
    # A job that has started is never replaced: the next one queues anew and runs too.
    writer.submit(lambda: ran.append("loss 3"), loss, replace=True)
    writer.flush()
    assert ran[-1] == "loss 3"


def test_each_writer_is_its_own(tmp_path: Path) -> None:
    """Two engines in one notebook do not share a queue: one busy writer holds up no other."""
    busy, other = ArtifactWriter(), ArtifactWriter()
    release = _blocked(busy, tmp_path)
    ran: list[str] = []
    other.submit(lambda: ran.append("other"), tmp_path / "x")
    other.flush()  # returns although ``busy`` is still blocked
    assert ran == ["other"]
    release.set()
    busy.flush()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_writer_thread_runs_niced(tmp_path: Path) -> None:
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    writer = ArtifactWriter()
    seen: list[int] = []
    writer.submit(
        lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
        tmp_path / "x",
    )
    writer.flush()
    assert seen == [WRITER_NICE]
    # Only the writer: the caller's threads (the training loop) keep their priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main


class _RecordingWriter(ArtifactWriter):
    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def close(self) -> None:
        self.events.append("close")
        super().close()


class _Recorder(Hook):
    """Puts a recording writer in the engine's place and logs the hook calls around it."""

    def __init__(self, fail: bool) -> None:
        self.fail, self.events = fail, []

    def on_fit_start(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.writer = engine.artifacts = _RecordingWriter(self.events)
        self.threads: list[threading.Thread] = []
        # A thread is running now; the job hands it over so the test can see it end.
        self.writer.submit(lambda: self.threads.append(threading.current_thread()), "start")

    def on_train_epoch_end(self, engine) -> None:  # type: ignore[no-untyped-def]
        if self.fail:
            raise RuntimeError("broken hook")

    def on_fit_end(self, engine) -> None:  # type: ignore[no-untyped-def]
        self.events.append("on_fit_end")

    def on_exception(self, engine, exception: BaseException) -> None:  # type: ignore[no-untyped-def]
        self.events.append("on_exception")


@pytest.mark.parametrize("fail", [False, True])
def test_fit_closes_the_writer_after_the_last_hook_call(fail: bool) -> None:
    hook = _Recorder(fail)
    if fail:
        with pytest.raises(RuntimeError, match="broken hook"):
            run_fit([hook], epochs=1)
    else:
        run_fit([hook], epochs=1)
    assert hook.events == ["on_exception" if fail else "on_fit_end", "close"]
    assert len(hook.threads) == 1 and not hook.threads[0].is_alive()  # no idle thread left


def test_close_runs_every_job_then_ends_the_thread_and_a_submit_starts_anew(
    tmp_path: Path,
) -> None:
    writer = ArtifactWriter()
    threads: list[threading.Thread] = []
    writer.submit(lambda: threads.append(threading.current_thread()), tmp_path / "who")
    release = _blocked(writer, tmp_path)
    ran: list[int] = []
    writer.submit(lambda: ran.append(1), tmp_path / "a")
    release.set()
    writer.close()
    assert ran == [1] and not threads[0].is_alive()
    writer.submit(lambda: (ran.append(2), threads.append(threading.current_thread())), tmp_path / "b")
    writer.flush()
    assert ran == [1, 2] and threads[1].is_alive() and threads[1] is not threads[0]
    writer.close()
    assert not threads[1].is_alive()


def _submit_and_flush_in_child(writer: ArtifactWriter, path: Path) -> None:
    writer.submit(lambda: path.write_text("child"), path)
    writer.flush()
    os._exit(0 if path.read_text() == "child" else 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX's")
def test_a_forked_child_gets_its_own_thread(tmp_path: Path) -> None:
    """The parent's worker thread does not exist in a child: the child starts its own."""
    import multiprocessing

    writer = ArtifactWriter()
    writer.submit(lambda: None, tmp_path / "parent")
    writer.flush()  # the parent's worker now idles
    child = multiprocessing.get_context("fork").Process(
        target=_submit_and_flush_in_child, args=(writer, tmp_path / "child.txt")
    )
    child.start()
    child.join(60)
    if child.exitcode is None:  # hung: the job was queued to a thread that is not there
        child.kill()
        child.join()
    assert child.exitcode == 0
    writer.close()


def test_close_runs_the_jobs_not_started_in_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer runs at nice 19 so as not to take cores from training; at close training is
    # over, and on a busy machine a nice-19 thread can wait long for a core: close() runs
    # what has not started yet itself, in order, and still drops a replaced job.
    from trainer import artifacts

    release = threading.Event()  # the writer thread is stuck before its first job (starved)
    monkeypatch.setattr(artifacts, "_name_and_lower_priority", lambda: release.wait(30))
    writer, ran = ArtifactWriter(), []
    here = threading.current_thread()
    writer.submit(lambda: ran.append(("a", threading.current_thread() is here)), tmp_path / "a")
    writer.submit(lambda: ran.append(("old", True)), tmp_path / "p", replace=True)
    writer.submit(lambda: ran.append(("new", threading.current_thread() is here)),
                  tmp_path / "p", replace=True)  # fmt: skip
    writer.submit(lambda: (ran.append(("b", threading.current_thread() is here)), release.set()),
                  tmp_path / "b")  # fmt: skip
    writer.close()
    assert ran == [("a", True), ("new", True), ("b", True)]


def test_a_ctrl_c_during_close_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import artifacts

    release = threading.Event()
    monkeypatch.setattr(artifacts, "_name_and_lower_priority", lambda: release.wait(30))
    writer, ran = ArtifactWriter(), []

    def interrupted() -> None:
        release.set()
        raise KeyboardInterrupt

    writer.submit(interrupted, tmp_path / "a")
    writer.submit(lambda: ran.append("b"), tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert ran == []
