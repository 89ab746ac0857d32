"""tools/runtime.py: the process-wide settings the CLIs apply."""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tools import runtime

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_steady_malloc_applies_on_glibc() -> None:
    assert runtime.steady_malloc() is True  # glibc took both thresholds
    assert runtime.steady_malloc() is True  # and again: idempotent


def test_steady_malloc_changes_nothing_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert runtime.steady_malloc() is False


def test_collector_paused_restores_the_collector_as_it_was() -> None:
    assert gc.isenabled()
    with runtime.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), runtime.collector_paused():
        raise KeyError("an import failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with runtime.collector_paused():
            pass
        assert not gc.isenabled()  # it was off: left off
    finally:
        gc.enable()


def test_importing_train_leaves_the_collector_on() -> None:
    # train.py imports its modules with the collector paused; it must be on again after.
    code = "import gc, tools.train; print(gc.isenabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert out.stdout.strip() == "True"
