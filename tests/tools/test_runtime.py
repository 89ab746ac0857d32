"""tools/runtime.py: the process-wide settings the CLIs apply."""

from __future__ import annotations

import platform
import sys

import pytest

from tests.tools.tiny_run import load_tool


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_steady_malloc_applies_on_glibc() -> None:
    runtime = load_tool("runtime")
    assert runtime.steady_malloc() is True  # glibc took both thresholds
    assert runtime.steady_malloc() is True  # and again: idempotent


def test_steady_malloc_changes_nothing_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = load_tool("runtime")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert runtime.steady_malloc() is False
