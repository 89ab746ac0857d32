"""SIGINT and SIGTERM during a fit: finish the current step, then stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from trainer.errors import Interrupted


@contextlib.contextmanager
def stop_on_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """Call ``on_signal(signum)`` at the first SIGINT or SIGTERM; a second one raises
    ``Interrupted(signum)`` at once, so the process exits with that signal's own code
    (128 + signum). The previous handlers come back on exit.

    Signal handlers can only be installed from the main thread; elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise Interrupted(signum)  # the second signal: leave now
        received.append(signum)
        on_signal(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
