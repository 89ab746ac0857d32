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
import weakref
from typing import Any

from torch.utils.data import DataLoader, Dataset

from trainer.signals import ignore_stop_signals

# Seconds to wait for a killed worker; it cannot ignore SIGKILL.
_KILL_WAIT = 5.0

# Every loader with workers made here, weakly: what the atexit handler ends.
_OPEN: weakref.WeakSet[DataLoader[Any]] = weakref.WeakSet()


def end_workers(loader: Any) -> None:
    """End the worker processes of ``loader`` now; iterating it again starts new ones.

    ``loader`` is a DataLoader or a wrapper holding one in ``.loader`` (``SkippingLoader``);
    anything else, or a loader without a running pool, is left as it is.
    """
    for _ in range(4):  # wrappers of wrappers, never a cycle
        if isinstance(loader, DataLoader):
            _end_pool(loader)
            return
        loader = getattr(loader, "loader", None)


def _end_pool(loader: DataLoader[Any]) -> None:
    # torch (2.x) has no public way to end a persistent pool: the DataLoader keeps it in the
    # private ``_iterator`` and ends it with ``_shutdown_workers()``, as the iterator's own
    # ``__del__`` does. That call sets the workers' done event and joins them. A worker that
    # still lives after it (stuck in a C call) is killed: it ignores the SIGTERM that
    # ``_shutdown_workers`` and multiprocessing would send, and a join on it never returns.
    # The private names are read with getattr, so another torch leaves this a no-op.
    pool = loader.__dict__.get("_iterator")
    if pool is None:
        return
    loader._iterator = None  # the next iter() starts a new pool
    shutdown = getattr(pool, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(pool, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(_KILL_WAIT)


class LoaderPools:
    """Makes the DataLoaders of one owner and ends their worker pools on ``close()``.

    Loaders with workers keep them between epochs (persistent) and ignore the process group's
    SIGINT and SIGTERM; they are held weakly here, so a loader dropped by its user ends its
    pool as torch does, and any pool still open at interpreter exit is ended then.

    Example:
        >>> pools = LoaderPools()
        >>> loader = pools.loader(dataset, batch_size=32, num_workers=2)  # doctest: +SKIP
        >>> pools.close()  # the workers have exited
    """

    def __init__(self) -> None:
        self._loaders: weakref.WeakSet[DataLoader[Any]] = weakref.WeakSet()

    def loader(self, dataset: Dataset[Any], *, num_workers: int, **kwargs: Any) -> DataLoader[Any]:
        """A ``DataLoader(dataset, num_workers=..., **kwargs)`` with persistent workers that
        ignore the group's stop signals (see ``trainer.signals.ignore_stop_signals``)."""
        loader: DataLoader[Any] = DataLoader(
            dataset,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            worker_init_fn=ignore_stop_signals,  # a signal to the group is the trainer's
            **kwargs,
        )
        if num_workers > 0:
            self._loaders.add(loader)
            _OPEN.add(loader)
        return loader

    def close(self) -> None:
        """End the worker processes of every loader made here that is still alive."""
        for loader in list(self._loaders):
            end_workers(loader)


def _end_open_pools() -> None:
    for loader in list(_OPEN):
        end_workers(loader)


# atexit runs its handlers last-registered first. Registered at import, after torch's
# (``torch.utils.data._utils`` sets the flag that turns ``_shutdown_workers`` into a no-op)
# and after multiprocessing's (which joins the children), this one runs before both.
atexit.register(_end_open_pools)
