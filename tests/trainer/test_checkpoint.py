from __future__ import annotations

import collections
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hooks.checkpoint import CheckpointHook
from tests.conftest import make_engine
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.engine import Engine
from trainer.errors import CheckpointError
from trainer.hook import Hook
from trainer.io import atomic_link


def test_checkpoint_files_load_with_weights_only(tmp_path) -> None:
    engine = make_engine([CheckpointHook(tmp_path, top_k=1)], max_epochs=2, ema_decay=0.9)
    engine.fit()
    ckpt_dir = tmp_path / "checkpoints"
    names = sorted(p.name for p in ckpt_dir.iterdir())
    assert "last.pt" in names and "best.pt" in names
    assert len([n for n in names if n.startswith("epoch_")]) == 1
    assert not [n for n in names if n.endswith(".tmp")]
    ckpt = torch.load(ckpt_dir / "last.pt", weights_only=True)
    for key in ("model", "ema", "optimizer", "scheduler", "state", "sampler", "rng", "hooks"):
        assert key in ckpt, key
    assert ckpt["classes"] == ["c0", "c1", "c2"]
    assert ckpt["state"]["epoch"] == 1 and len(ckpt["state"]["history"]) == 2


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _onnx_bytes() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])  # fmt: skip
    return helper.make_model(graph).SerializeToString()


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    f = io.BytesIO()
    Image.new("RGB", (4, 4)).save(f, "PNG")
    return f.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a checkpoint at all",
        b"hello\n",  # torch.load: KeyError
        b"epoch,step,lr\n0,1,0.1\n",  # metrics.csv: IndexError
        b'{"0": "cat"}',  # labels_mapping.json
        _png_bytes(),
        _onnx_bytes(),  # weights_only's UnpicklingError: pages of advice, load it unsafely
        pickle.dumps({"model": object()}, protocol=2),  # a pickle of other objects
        pickle.dumps([1, 2], protocol=2),  # plain data, not a checkpoint
    ],
    ids=["empty", "text", "hello", "csv", "json", "png", "onnx", "objects", "list"],
)
def test_unreadable_checkpoint_is_a_clear_error(tmp_path, content) -> None:
    # Any file that is not a checkpoint is one CheckpointError paragraph naming it and the fix
    # (the tools print it as their error: exit 2), never torch's own text, which advises
    # loading with weights_only=False.
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message, message
    assert "best.pt" in message and len(message) < 400, message


def test_missing_checkpoint_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


class _Score(Hook):
    """Sets a monitored metric per epoch, before the checkpoint hook reads it."""

    order = 0

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def on_train_epoch_end(self, engine) -> None:
        engine.state.metrics["score"] = self.scores[engine.state.epoch]


def test_best_and_top_k_keep_their_epoch_while_last_moves_on(tmp_path) -> None:
    hooks = [_Score([1.0, 3.0, 2.0]), CheckpointHook(tmp_path, monitor="score", top_k=2)]
    make_engine(hooks, max_epochs=3).fit()
    d = tmp_path / "checkpoints"
    assert sorted(p.name for p in d.iterdir()) == [
        "best.pt",
        "epoch_001.pt",
        "epoch_002.pt",
        "last.pt",
    ]
    epoch = {p.name: load_checkpoint(p)["state"]["epoch"] for p in d.iterdir()}
    assert epoch == {"best.pt": 1, "epoch_001.pt": 1, "epoch_002.pt": 2, "last.pt": 2}
    # One serialisation per epoch: the copies are links to it (this file system has them).
    assert os.path.samefile(d / "best.pt", d / "epoch_001.pt")
    assert os.path.samefile(d / "last.pt", d / "epoch_002.pt")


def test_atomic_link_copies_where_links_are_refused(tmp_path, monkeypatch) -> None:
    src = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3.0)}}, src)

    def no_links(a: object, b: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    atomic_link(src, tmp_path / "best.pt")
    save_checkpoint({"model": {"w": torch.zeros(3)}}, src)  # last moves on
    assert not os.path.samefile(src, tmp_path / "best.pt")
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_checkpoints_are_written_off_the_training_thread_from_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hooks.checkpoint as checkpoint_hook

    written: list[tuple[str, dict[str, torch.Tensor]]] = []
    # trained[e]: a batch of epoch e has trained (for the last epoch: the fit is ending).
    trained = collections.defaultdict(threading.Event)

    def slow_save(ckpt: dict[str, Any], path: Path) -> Path:
        # Held until the next epoch has trained a batch: proof that the write is not on the
        # training thread, which would never get there (the wait would time out).
        assert trained[ckpt["state"]["epoch"] + 1].wait(60), "training waited for the write"
        model = {k: v.clone() for k, v in ckpt["model"].items()}
        written.append((threading.current_thread().name, model))
        return save_checkpoint(ckpt, path)

    monkeypatch.setattr(checkpoint_hook, "save_checkpoint", slow_save)

    class Progress(Hook):
        order = 10  # before the checkpoint hook, which waits for the last write at fit end

        def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
            trained[engine.state.epoch].set()

        def on_fit_end(self, engine: Engine) -> None:
            trained[engine.state.epoch + 1].set()

    class Weights(Hook):
        order = 95  # after the checkpoint hook: the weights it saved

        def __init__(self) -> None:
            self.at_end: list[dict[str, torch.Tensor]] = []

        def on_train_epoch_end(self, engine: Engine) -> None:
            state = engine.model.state_dict()
            self.at_end.append({k: v.detach().clone() for k, v in state.items()})

    weights = Weights()
    hooks = [CheckpointHook(tmp_path), weights, Progress()]
    make_engine(hooks, max_epochs=3, sanity_steps=0).fit()
    assert [name.split("_")[0] for name, _ in written] == ["checkpoint-writer"] * 3
    for (_, saved), at_end in zip(written, weights.at_end, strict=True):
        assert saved.keys() == at_end.keys()
        assert all(torch.equal(saved[k], at_end[k]) for k in at_end)  # not later weights
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert len(last["state"]["history"]) == 3  # fit waited for the last write


class _Stateful(Hook):
    """A hook whose state is ``state``; keeps what it is given back."""

    def __init__(self, state: Any) -> None:
        self.state, self.loaded = state, None

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.loaded = state


def test_a_hook_state_of_dict_subclasses_comes_back_as_it_was(tmp_path) -> None:
    state = {"seen": collections.Counter(cat=3, dog=1), "order": collections.OrderedDict(b=1, a=2)}
    make_engine([_Stateful(state), CheckpointHook(tmp_path)], max_epochs=1).fit()
    again = _Stateful({})
    make_engine([again, CheckpointHook(tmp_path)], max_epochs=2).fit(resume=tmp_path)
    assert again.loaded == state
    assert type(again.loaded["seen"]) is collections.Counter
    assert list(again.loaded["order"]) == ["b", "a"]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (collections.defaultdict(int, cat=3), "defaultdict"),
        (np.zeros(2), "ndarray"),
        ([1, np.float64(0.5)], "float64"),
    ],
    ids=["defaultdict", "numpy-array", "numpy-scalar"],
)
def test_a_hook_state_a_checkpoint_cannot_load_is_refused_at_the_first_save(
    tmp_path, value: Any, kind: str
) -> None:
    # Saved, it would only fail at resume, epochs later: refused at the first save instead,
    # naming the hook, the value and what to return.
    engine = make_engine([_Stateful({"x": value}), CheckpointHook(tmp_path)], max_epochs=1)
    with pytest.raises(TypeError, match=rf"_Stateful.state_dict\(\) holds a {kind} at state\['x'\]"):
        engine.fit()
