"""Loader worker processes that end: when their owner closes them, and before interpreter exit.

Loader workers ignore SIGINT and SIGTERM (``trainer.signals.ignore_stop_signals``): a signal to
the whole process group is the trainer's to handle. The price is that nothing else may rely on
SIGTERM to end them. Multiprocessing's own exit handler does exactly that to the persistent
pools still alive at exit (SIGTERM, then ``join()`` with no timeout), so a script that kept a
loader, or one that died of an error with its frames held by the traceback, would never exit.

So every pool is ended on purpose: ``end_workers`` ends one loader's (the engine calls it when
an entry point returns or raises), ``LoaderPools.close`` ends all that one owner made
(``ImageFolderData.close``), and an atexit handler ends every pool still open before
multiprocessing's handler runs.
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (its exit handler must be registered before ours)
import os
import weakref
from collections.abc import Iterable
from typing import Any

from torch.utils.data import DataLoader, Dataset

from trainer.signals import ignore_stop_signals

# Seconds to wait for a killed worker; it cannot ignore SIGKILL.
_KILL_WAIT = 5.0

# Every worker pool started here, and its worker processes, weakly: what the atexit handler
# ends. Pools, not loaders: a pool can outlive its loader (held by a traceback's frames). And
# workers, not only pools: a pool collected in a reference cycle may have lost its queues
# before torch's ``__del__`` tells its workers to stop, and leave them running.
_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()
_WORKERS: weakref.WeakSet[Any] = weakref.WeakSet()
_PID = os.getpid()  # a forked child inherits the set, not the pools


def end_workers(loader: Any) -> None:
    """End the worker processes of ``loader`` now; iterating it again starts new ones.

    ``loader`` is a DataLoader or a wrapper holding one in ``.loader`` (``SkippingLoader``);
    anything else, or a loader without a running pool, is left as it is.
    """
    for _ in range(4):  # wrappers of wrappers, never a cycle
        if isinstance(loader, DataLoader):
            _end_pool(_detach_pool(loader))
            return
        loader = getattr(loader, "loader", None)


# torch (2.x) has no public way to end a persistent pool: the DataLoader keeps it in the private
# ``_iterator`` and the pool ends with ``_shutdown_workers()``, as its own ``__del__`` does;
# the pool's processes are its ``_workers``. The three functions below are the only users of
# those private names; read with getattr, so another torch makes them no-ops, not errors.
def _detach_pool(loader: DataLoader[Any]) -> Any:
    """Take the persistent pool off ``loader`` (its next iter() starts a new one); or None."""
    pool = loader.__dict__.get("_iterator")
    if pool is not None:
        loader._iterator = None
    return pool


def _end_pool(pool: Any) -> None:
    """``_shutdown_workers()`` sets the workers' done event and joins them; a worker still alive
    after it is killed (see ``_kill``)."""
    if pool is None:
        return
    shutdown = getattr(pool, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    _kill(_workers_of(pool))


def _workers_of(pool: Any) -> list[Any]:
    """The pool's worker processes (``multiprocessing.Process``)."""
    return list(getattr(pool, "_workers", ()))


def _kill(workers: Iterable[Any]) -> None:
    """Kill the workers still alive: they ignore the SIGTERM that torch and multiprocessing
    would send, and a join on one of them (stuck in a C call, or never told to stop) would
    never return."""
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(_KILL_WAIT)


class _Loader(DataLoader[Any]):
    """A DataLoader that records each worker pool it starts (its multiprocess iterator)."""

    pools: weakref.WeakSet[Any]

    def __iter__(self) -> Any:
        pool = super().__iter__()
        if self.num_workers > 0:
            self.pools.add(pool)
            _POOLS.add(pool)
            _WORKERS.update(_workers_of(pool))
        return pool


class LoaderPools:
    """Makes the DataLoaders of one owner and ends their worker pools on ``close()``.

    Loaders with workers keep them between epochs (persistent) and ignore the process group's
    SIGINT and SIGTERM. Loaders and pools are held weakly here: a loader dropped by its user
    ends its pool as torch does, and any pool still alive at interpreter exit is ended then.

    Example:
        >>> pools = LoaderPools()
        >>> loader = pools.loader(dataset, batch_size=32, num_workers=2)  # doctest: +SKIP
        >>> pools.close()  # the workers have exited
    """

    def __init__(self) -> None:
        self._loaders: weakref.WeakSet[DataLoader[Any]] = weakref.WeakSet()
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()

    def loader(self, dataset: Dataset[Any], *, num_workers: int, **kwargs: Any) -> DataLoader[Any]:
        """A ``DataLoader(dataset, num_workers=..., **kwargs)`` with persistent workers that
        ignore the group's stop signals (see ``trainer.signals.ignore_stop_signals``)."""
        loader = _Loader(
            dataset,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            worker_init_fn=ignore_stop_signals,  # a signal to the group is the trainer's
            **kwargs,
        )
        loader.pools = self._pools
        self._loaders.add(loader)
        return loader

    def close(self) -> None:
        """End the worker processes of every loader made here, alive or not."""
        for loader in list(self._loaders):
            _detach_pool(loader)
        for pool in list(self._pools):
            _end_pool(pool)


def _end_open_pools() -> None:
    if os.getpid() == _PID:
        for pool in list(_POOLS):
            _end_pool(pool)
        _kill(list(_WORKERS))


# atexit runs its handlers last-registered first. Registered at import, after torch's
# (``torch.utils.data._utils`` sets the flag that turns ``_shutdown_workers`` into a no-op)
# and after multiprocessing's (which joins the children), this one runs before both.
atexit.register(_end_open_pools)
