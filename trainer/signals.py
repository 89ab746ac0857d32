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


def ignore_stop_signals(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: loader workers ignore SIGINT and SIGTERM.

    A signal sent to the whole process group (Ctrl-C in a terminal, SLURM, systemd,
    ``kill -- -PGID``) reaches the workers too. It is the main process's to handle: it stops
    the fit after the current step, saves ``interrupted.pt`` and shuts the workers down. A
    worker that died of it instead would end the run with "DataLoader worker killed", and
    one that ran the inherited handler would print the stop message once per worker.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
