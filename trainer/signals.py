"""SIGINT and SIGTERM during a fit: finish the current step, then stop."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from trainer.distributed import max_over_ranks
from trainer.errors import Interrupted

if TYPE_CHECKING:
    from trainer.state import EngineState

log = logging.getLogger("trainer")


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


class StopRequests:
    """A stop asked for by a hook (``state.should_stop``) or a signal, agreed by every rank.

    The engine installs ``on_signal`` with :func:`stop_on_signals` during a fit, and calls
    ``agree`` after each step and epoch. Under DDP the ranks agree first (one tiny all-reduce
    on the CPU, no device sync), so a request on any rank stops every rank after the same
    step, and none is left waiting in the next gradient all-reduce.

    Args:
        state: the engine's state; its ``should_stop`` is read and set.
        world_size: processes in the run.
    """

    def __init__(self, state: EngineState, world_size: int) -> None:
        self.state, self.world_size = state, world_size
        self.signal: int | None = None

    def on_signal(self, signum: int) -> None:
        """SIGINT/SIGTERM: stop after the current step."""
        # No stop_reason: that marks a finished run, and an interrupted one is not.
        self.signal = signum
        self.state.should_stop = True
        log.warning(
            "%s: finishing the current step, then saving checkpoints/interrupted.pt; "
            "press Ctrl-C again to exit at once", signal.Signals(signum).name,
        )  # fmt: skip

    def agree(self) -> bool:
        """Raise ``Interrupted`` if a signal came (to any rank), else whether a hook asked to
        stop (on any rank)."""
        s = self.state
        if self.world_size > 1:
            signum, stop = max_over_ranks([self.signal or 0, int(s.should_stop)])
            self.signal, s.should_stop = signum or None, bool(stop)
        if self.signal is not None:
            raise Interrupted(self.signal)
        return s.should_stop


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
