"""Loader worker pools end when their owner closes them: ``ImageFolderData.close``, every
engine entry point (on errors too), ``Engine.close`` and ``with Engine(...)``.

The interpreter-exit path needs a real process: tests/tools/test_process_exits.py.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_engine, make_tree
from trainer.data import ImageFolderData
from trainer.engine import Engine
from trainer.hook import Hook


def workers() -> set[int]:
    """The pids of this process's live daemonic children: loader workers."""
    return {p.pid for p in multiprocessing.active_children() if p.daemon and p.pid}


@pytest.fixture
def data(tmp_path: Path) -> ImageFolderData:
    tree = make_tree(tmp_path / "tree", splits=("train", "val", "test"))
    return ImageFolderData(tree, img_size=16, batch_size=4, workers=2, verify="none")


def test_close_ends_the_workers_and_the_loaders_still_work(data: ImageFolderData) -> None:
    before = workers()
    train, val = data.train_loader(), data.val_loader()
    next(iter(val))  # a pool left in the middle of an epoch
    assert len(list(train)) == 4
    assert len(workers() - before) == 4  # persistent: both pools are alive between epochs
    data.close()
    assert workers() - before == set()
    assert len(list(train)) == 4  # a new pool starts
    data.close()
    assert workers() - before == set()


class Fails(Hook):
    def on_train_batch_end(self, engine: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        raise OSError(28, "No space left on device")


def test_fit_and_test_end_the_workers(data: ImageFolderData) -> None:
    before = workers()
    engine = make_engine(data=data, max_epochs=1, sanity_steps=1)  # type: ignore[arg-type]
    engine.fit()
    assert workers() - before == set()
    engine.test()  # the engine still works: new workers, ended again
    engine.validate()
    assert workers() - before == set()
    loader = data.val_loader()  # held: not ended by its garbage collection
    engine.predict(loader)
    assert workers() - before == set()


def test_a_fit_that_raises_ends_the_workers(data: ImageFolderData) -> None:
    before = workers()
    engine = make_engine([Fails()], data=data, max_epochs=1)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space left"):
        engine.fit()
    assert workers() - before == set()


def test_the_engine_is_a_context_manager_that_closes(
    data: ImageFolderData, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed: list[Engine] = []
    monkeypatch.setattr(Engine, "close", lambda self: closed.append(self))
    with make_engine(data=data, max_epochs=1) as engine:  # type: ignore[arg-type]
        assert not closed
    assert closed == [engine]
