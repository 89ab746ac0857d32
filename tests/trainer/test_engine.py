from __future__ import annotations

import copy
import gc
import itertools
import sys
import threading
from typing import Any

import pytest
import torch
from torch import nn

from hooks import default_hooks
from hooks.checkpoint import CheckpointHook
from tests.conftest import KillAfterEpoch, StandInData, make_engine
from trainer.engine import Engine
from trainer.hook import HOOK_METHODS, Hook, resolve_hook_plan
from trainer.models import build_model
from trainer.optim import warmup_cosine


class Recorder(Hook):
    """Records every hook call with the phase it happened in."""

    def __init__(self) -> None:
        self.calls: list[str] = []


def _recording(method: str):
    def fn(self: Recorder, engine: Engine, *args: Any) -> None:
        self.calls.append(method)

    return fn


for _m in HOOK_METHODS:
    setattr(Recorder, _m, _recording(_m))


def test_fit_learns_and_returns_history() -> None:
    engine = make_engine(max_epochs=4)
    history = engine.fit()
    assert len(history) == 4 and history is engine.state.history
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    assert history[-1]["val/acc"] > 0.6  # chance is 1/3
    assert set(engine.state.per_class_acc) == {"c0", "c1", "c2"}
    assert engine.state.best is not None and engine.state.step == 4 * 4


def test_checkpoint_hooks_fire_after_train_epoch_end(tmp_path) -> None:
    rec = Recorder()
    engine = make_engine([CheckpointHook(tmp_path), rec], max_epochs=1, sanity_steps=0)
    engine.fit()
    tail = rec.calls[-6:]
    assert tail == ["on_validation_end", "on_train_epoch_end", "on_save_checkpoint",
                    "on_train_end", "on_fit_end", "teardown"]  # fmt: skip


def test_test_loop_fires_test_hooks() -> None:
    rec = Recorder()
    engine = make_engine([rec], data=StandInData.sized(16, batch_size=16))
    metrics = engine.test()
    assert rec.calls == [
        "setup",
        "on_test_start",
        "on_test_epoch_start",
        "on_test_batch_start",
        "on_test_batch_end",
        "on_test_epoch_end",
        "on_test_end",
        "teardown",
    ]
    assert set(metrics) >= {"test/loss", "test/acc"}


def test_order_resolution_and_skipping() -> None:
    seen: list[str] = []

    class A(Hook):
        def __init__(self, tag: str, order: int) -> None:
            self.tag, self.order = tag, order

        def on_fit_start(self, engine: Engine) -> None:
            seen.append(self.tag)

    class Quiet(Hook):
        pass

    hooks = [A("late", 60), A("first", 10), A("tie-a", 50), Quiet(), A("tie-b", 50)]
    plan = resolve_hook_plan(hooks)
    assert plan["on_train_batch_end"] == []  # nobody overrides it: nothing runs per step
    assert len(plan["on_fit_start"]) == 4
    for fn in plan["on_fit_start"]:
        fn(None)
    assert seen == ["first", "tie-a", "tie-b", "late"]
    text = make_engine(hooks).describe_hooks()
    assert text.index("Quiet") > text.index("A ") and "on_fit_start" in text


def test_hook_error_names_hook_and_fires_on_exception() -> None:
    class Boom(Hook):
        def on_train_batch_end(self, engine, outputs, batch, batch_idx) -> None:
            raise RuntimeError("boom")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom") as info:
        make_engine([Boom(), rec], sanity_steps=0).fit()
    assert "Boom.on_train_batch_end" in "".join(getattr(info.value, "__notes__", []))
    assert rec.calls[-2:] == ["on_exception", "teardown"]  # teardown even after an error


def test_should_stop_ends_fit() -> None:
    class StopAfterFirst(Hook):
        def on_train_epoch_end(self, engine: Engine) -> None:
            engine.state.should_stop = True

    engine = make_engine([StopAfterFirst()], max_epochs=5)
    engine.fit()
    assert len(engine.state.history) == 1 and engine.state.stop_reason


def test_gradient_accumulation_steps() -> None:
    data = StandInData.sized(80, batch_size=16)  # 5 batches per epoch
    engine = make_engine(data=data, accumulate=2, max_epochs=1)
    engine.fit()
    assert engine.state.step == 3  # after batches 2, 4 and the last one


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_grad_clip_limits_the_update() -> None:
    norms: list[float] = []

    engine = make_engine(grad_clip=1e-3, max_epochs=1, sanity_steps=0)
    real_step = engine.optimizer.step

    def step(*a: Any, **k: Any) -> Any:
        grads = [p.grad for p in engine.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(*a, **k)

    engine.optimizer.step = step  # type: ignore[method-assign]
    engine.fit()
    assert norms and max(norms) <= 1e-3 * 1.01


def test_user_optimizer_scheduler_and_loss_are_used() -> None:
    data = StandInData.sized(64)
    model = build_model("small_cnn", 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    calls = []

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return nn.functional.cross_entropy(logits, y)

    engine = Engine(model, data, max_epochs=1, optimizer=opt, scheduler=sched, loss=loss)
    engine.fit()
    assert engine.optimizer is opt and engine.scheduler is sched
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**4)
    assert len(calls) >= 4


def test_warmup_then_cosine() -> None:
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12, min_ratio=0.0)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert lrs[-1] < 0.05


def test_ema_weights_used_for_validation() -> None:
    engine = make_engine(ema_decay=0.9, max_epochs=1)
    assert engine.eval_model is engine.ema.module  # type: ignore[union-attr]
    engine.fit()
    raw = dict(engine.model.named_parameters())
    ema = dict(engine.ema.module.named_parameters())  # type: ignore[union-attr]
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_resume_is_bitwise_equal(tmp_path) -> None:
    straight = make_engine([CheckpointHook(tmp_path / "a")], max_epochs=4, ema_decay=0.9)
    straight.fit()

    first = make_engine(
        [CheckpointHook(tmp_path / "b"), KillAfterEpoch(1)], max_epochs=4, ema_decay=0.9
    )
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert len(first.state.history) == 2
    torch.manual_seed(123)  # a fresh process would not share the RNG state either
    resumed = make_engine([CheckpointHook(tmp_path / "b")], max_epochs=4, ema_decay=0.9)
    resumed.fit(resume=tmp_path / "b")

    for (k, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    for a, b in zip(
        straight.ema.module.state_dict().values(),  # type: ignore[union-attr]
        resumed.ema.module.state_dict().values(),  # type: ignore[union-attr]
        strict=True,
    ):
        assert torch.equal(a, b)

    def strip(h):
        return [{k: v for k, v in r.items() if "time" not in k and "img_s" not in k} for r in h]

    assert strip(straight.state.history) == strip(resumed.state.history)


def test_resume_finished_run_trains_nothing(tmp_path, caplog) -> None:
    make_engine([CheckpointHook(tmp_path)], max_epochs=1).fit()
    engine = make_engine([CheckpointHook(tmp_path)], max_epochs=1)
    before = copy.deepcopy(engine.model.state_dict())
    with caplog.at_level("WARNING"):
        engine.fit(resume=tmp_path)
    assert "already finished" in caplog.text
    assert len(engine.state.history) == 1
    assert not all(torch.equal(before[k], v) for k, v in engine.model.state_dict().items())


def test_resume_with_more_epochs_says_the_lr_schedule_is_laid_out_again(tmp_path, caplog) -> None:
    # Raising the epochs of a finished run (what "already finished" advises) stretches the
    # warmup-cosine schedule over the new length: the lr jumps back up, and the log says so.
    make_engine([CheckpointHook(tmp_path)], max_epochs=2).fit()
    with caplog.at_level("WARNING"):
        make_engine([CheckpointHook(tmp_path)], max_epochs=2).fit(resume=tmp_path)
    assert "schedule" not in caplog.text
    engine = make_engine([CheckpointHook(tmp_path)], max_epochs=4)
    with caplog.at_level("WARNING"):
        engine.fit(resume=tmp_path)
    lrs = [row["lr"] for row in engine.state.history]
    assert lrs[2] > 10 * lrs[1]  # back up from the end of the 2-epoch cosine
    message = caplog.text
    assert "trained 2 epochs of a 2-epoch learning-rate schedule" in message
    assert "laid out over 4 epochs" in message and f"{lrs[1]:.3g}" in message


def test_resume_with_other_classes_is_an_error(tmp_path) -> None:
    from trainer.errors import CheckpointError

    make_engine([CheckpointHook(tmp_path)], max_epochs=1).fit()
    other = StandInData.sized(64)
    other.classes = ["c0", "c1", "zebra"]
    with pytest.raises(CheckpointError, match="zebra"):
        make_engine(data=other).fit(resume=tmp_path)


@pytest.mark.parametrize("with_default_hooks", [False, True])
def test_no_host_reads_inside_training_steps(monkeypatch, tmp_path, with_default_hooks) -> None:
    """The step path, the default hooks' batch methods included, never reads a tensor on the
    host (a device sync on a GPU); reads happen only after the epoch. Counted on the CPU, so
    CI catches a sync without a GPU."""
    in_step = {"on": False, "reads": 0}
    training_thread = threading.get_ident()

    class Open(Hook):
        order = -(10**9)  # before every other hook's on_train_batch_start

        def on_train_batch_start(self, engine, batch, batch_idx) -> None:
            in_step["on"] = True

    class Close(Hook):
        order = 10**9  # after every other hook's on_train_batch_end

        def on_train_batch_end(self, engine, outputs, batch, batch_idx) -> None:
            in_step["on"] = False

    def spy(name: str):
        real = getattr(torch.Tensor, name)

        def wrapped(self, *a: Any, **k: Any) -> Any:
            # torch.optim reads its own step counters, which live on the host by design
            # (a CPU tensor even when training on CUDA): not a device sync.
            # Only the training thread: the artefact writer draws the last epoch's plots (and
            # reads its own copies of tensors) on a thread of its own meanwhile.
            caller = sys._getframe(1).f_code.co_filename
            on_training_thread = threading.get_ident() == training_thread
            if in_step["on"] and on_training_thread and "torch/optim" not in caller.replace("\\", "/"):
                in_step["reads"] += 1
            return real(self, *a, **k)

        return wrapped

    hooks: list[Hook] = [Open(), Close()]
    if with_default_hooks:
        # The progress bar reads the loss every refresh_every steps by design; export is once.
        hooks += default_hooks(tmp_path, progress=False, export=False, report=False)
    names = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__", "numpy")
    for name in names:
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    engine = make_engine(hooks, max_epochs=2, ema_decay=0.9, grad_clip=1.0, accumulate=2)
    engine.fit()
    assert engine.state.step > 0
    assert in_step["reads"] == 0


def test_the_library_leaves_the_garbage_collector_alone() -> None:
    """gc.freeze is process-wide policy: tools/train.py may apply it, the engine never does."""

    class FreezeCount(Hook):
        def __init__(self) -> None:
            self.counts: list[int] = []

        def on_train_epoch_end(self, engine: Engine) -> None:
            self.counts.append(gc.get_freeze_count())

    before = gc.get_freeze_count()
    hook = FreezeCount()
    make_engine([hook]).fit()
    assert hook.counts == [before, before]
    assert gc.get_freeze_count() == before


def test_validation_passes_count_their_batches_and_record_metrics_before_epoch_end() -> None:
    """The sanity check runs ``sanity_steps`` batches and records nothing; a validation's
    metrics are in ``state`` when ``on_validation_epoch_end`` runs, and ``num_batches`` is
    right in each pass. ``run_eval`` is the one loop of all of them."""
    seen: list[tuple[str, int, int]] = []
    at_epoch_end: list[tuple[str, float | None]] = []

    class Spy(Hook):
        def on_validation_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None:
            seen.append((engine.state.phase, batch_idx, engine.state.num_batches))

        def on_validation_epoch_end(self, engine: Engine) -> None:
            at_epoch_end.append((engine.state.phase, engine.state.metrics.get("val/acc")))

    data = StandInData()  # 12 val images in batches of 5
    engine = make_engine([Spy()], data=data, max_epochs=1, sanity_steps=1)
    engine.fit()
    assert seen == [("sanity", 0, 1), ("val", 0, 3), ("val", 1, 3), ("val", 2, 3)]
    assert at_epoch_end[0] == ("sanity", None)
    assert at_epoch_end[1][0] == "val" and at_epoch_end[1][1] == engine.state.history[0]["val/acc"]
