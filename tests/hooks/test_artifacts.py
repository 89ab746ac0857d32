"""The artefact writer thread: order, flush, failures as warnings, and the inline switch."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


def test_a_replacing_job_takes_the_queued_older_ones_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_artifacts, "REFRESH_BUDGET", 1e12)  # order only, no deferral
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    ran: list[str] = []
    submit(block, tmp_path / "block")
    assert started.wait(10)  # the writer is busy: everything below stays queued
    loss, report = tmp_path / "loss.png", tmp_path / "report.html"
    submit(lambda: ran.append("loss 1"), loss, replace=True)
    submit(lambda: ran.append("epoch_001.png"), tmp_path / "epoch_001.png", replace=True)
    submit(lambda: ran.append("report 1"), report, replace=True)
    submit(lambda: ran.append("loss 2"), loss, replace=True)
    submit(lambda: ran.append("epoch_002.png"), tmp_path / "epoch_002.png", replace=True)
    submit(lambda: ran.append("tb 1"), tmp_path / "tb")  # not replacing: both run
    submit(lambda: ran.append("tb 2"), tmp_path / "tb")
    submit(lambda: ran.append("report 2"), report, replace=True)
    release.set()
    flush()
    # The newest loss plot runs once, in the older job's slot, so the report still follows it.
    assert ran == ["loss 2", "epoch_001.png", "report 2", "epoch_002.png", "tb 1", "tb 2"]
    # A job that has started is never replaced: the next one queues anew and runs too.
    submit(lambda: ran.append("loss 3"), loss, replace=True)
    flush()
    assert ran[-1] == "loss 3"


def test_redraws_over_the_cpu_budget_wait_and_others_pass_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_artifacts, "REFRESH_BUDGET", 0.01)
    ran: list[str] = []
    loss, accuracy = tmp_path / "loss.png", tmp_path / "accuracy.png"
    for path in (loss, accuracy):  # first drawings: not held back
        submit(lambda p=path: ran.append(f"first {p.stem}"), path, replace=True)
    flush()
    monkeypatch.setattr(_artifacts._WRITER, "_debt", 0.0)

    def burn() -> None:  # 30 ms of CPU: the next redraw may start 3 s later
        t = time.thread_time()
        while time.thread_time() - t < 0.03:
            pass
        ran.append("loss")

    submit(burn, loss, replace=True)
    submit(lambda: ran.append("accuracy"), accuracy, replace=True)
    submit(lambda: ran.append("epoch_000"), tmp_path / "epoch_000.png")
    submit(lambda: ran.append("first sampler"), tmp_path / "sampler.png", replace=True)
    deadline = time.monotonic() + 10
    while len(ran) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # The per-epoch file and a first drawing went ahead; the redraw waits for the budget ...
    assert ran[2:] == ["loss", "epoch_000", "first sampler"]
    flush()  # ... or for a flush, which runs everything
    assert ran[-1] == "accuracy"


def test_a_first_drawing_goes_ahead_and_is_paid_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_artifacts, "REFRESH_BUDGET", 0.01)
    monkeypatch.setattr(_artifacts._WRITER, "_debt", 1.0)  # 100 s over the budget already
    monkeypatch.setattr(_artifacts._WRITER, "_debt_at", time.monotonic())
    ran: list[str] = []

    def burn() -> None:
        t = time.thread_time()
        while time.thread_time() - t < 0.03:
            pass
        ran.append("first")

    path = tmp_path / "plot.png"
    submit(burn, path, replace=True)  # a first drawing: runs despite the debt
    deadline = time.monotonic() + 10
    while not ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["first"]
    time.sleep(0.05)  # the writer books the job's CPU after it returns
    assert _artifacts._WRITER._owed() > 1.0  # ... and its 30 ms were added to the debt
    submit(lambda: ran.append("redraw"), path, replace=True)
    time.sleep(0.2)
    assert ran == ["first"]  # the redraw waits
    flush()
    assert ran == ["first", "redraw"]


def test_settle_waits_for_what_may_run_and_leaves_held_back_redraws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_artifacts, "REFRESH_BUDGET", 0.01)
    ran: list[str] = []
    plot = tmp_path / "plot.png"
    submit(lambda: ran.append("first"), plot, replace=True)
    flush()
    monkeypatch.setattr(_artifacts._WRITER, "_debt", 1.0)  # redraws held back for 100 s
    monkeypatch.setattr(_artifacts._WRITER, "_debt_at", time.monotonic())
    submit(lambda: ran.append("redraw"), plot, replace=True)

    def slow() -> None:
        time.sleep(0.2)
        ran.append("epoch_000")

    submit(slow, tmp_path / "epoch_000.png")
    _artifacts.settle()
    assert ran == ["first", "epoch_000"]  # the per-epoch file waited for, the redraw not
    flush()
    assert ran == ["first", "epoch_000", "redraw"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_writer_thread_runs_niced(tmp_path: Path) -> None:
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[int] = []
    submit(
        lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())),
        tmp_path / "x",
    )
    flush()
    assert seen == [_artifacts.WRITER_NICE]
    # Only the writer: the caller's threads (the training loop) keep their priority.
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main


@pytest.mark.parametrize(
    ("mode", "shape"), [("RGB", (37, 53, 3)), ("L", (20, 9)), ("RGB", (1, 1, 3))]
)
def test_png_bytes_decode_to_the_same_pixels(mode: str, shape: tuple[int, ...]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    image = Image.open(io.BytesIO(_artifacts.png_bytes(Image.fromarray(pixels, mode))))
    image.load()  # checks every chunk's CRC and the deflate stream
    assert image.format == "PNG" and image.mode == mode
    assert np.array_equal(np.asarray(image), pixels)


def test_png_bytes_hands_other_modes_to_pillow() -> None:
    rgba = Image.new("RGBA", (4, 3), (10, 20, 30, 40))
    back = Image.open(io.BytesIO(_artifacts.png_bytes(rgba)))
    assert back.mode == "RGBA" and back.getpixel((0, 0)) == (10, 20, 30, 40)
