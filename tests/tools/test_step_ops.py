"""What the Engine and its default hooks add to a training step, counted in device operations.

On a GPU a small model's step is bound by the host: each extra operation is an extra kernel
launch, paid on every step (tools/benchmarks/gpu_profile_step.py shows it there). Counting
the operations of one step, against the bench's hand-written loop, holds that cost down without
timing anything: a count does not depend on the machine's load.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tools.benchmarks import bench_common as common
from tools.benchmarks import bench_steps as steps
from trainer.engine import Engine
from trainer.hook import Hook

# Device operations per step the Engine with its default hooks may add over the bare loop
# (resnet18, fp32, CPU): 40 when written; 109 before the BatchNorm guard and the tallies were
# batched (a where per BatchNorm buffer, and torch.isfinite, four operations, three times).
EXTRA_OPS_LIMIT = 45


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


class _CountSecondStep(Hook):
    """Counts from the end of the first batch to the end of the second: one whole iteration
    of the loop (moving the batch, the step, the tallies and every hook's batch methods)."""

    order = 10**9  # after every other hook

    def __init__(self) -> None:
        self.mode = _Count()

    def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
        if engine.state.epoch == 0 and i == 0:
            self.mode.__enter__()
        elif engine.state.epoch == 0 and i == 1:
            self.mode.__exit__(None, None, None)


def test_the_engine_and_default_hooks_add_few_operations_per_step() -> None:
    w = common.Workload("resnet18", 16, 2, steps=3, num_classes=3, val_batches=1)
    device = torch.device("cpu")
    data = common.DeviceBatches(w, device)

    bare = steps.BareLoop(w, data, device, "32", 1)
    bare.model.train()
    counted = _Count()
    for i, (x, y) in enumerate(data.train[:2]):  # the second step: optimizer state made
        with counted if i == 1 else contextlib.nullcontext():
            loss = bare.loss_fn(bare.model(bare._prep(x)), y)
            loss.backward()
            bare.opt.step()
            bare.opt.zero_grad(set_to_none=True)
            bare.sched.step()
    bare_ops = sum(counted.ops.values())

    counter = _CountSecondStep()
    with tempfile.TemporaryDirectory() as tmp:
        hooks = common.hooks_for_bench(Path(tmp))
        common.EngineRun("hooks", w, data, device, "32", 1, [*hooks, counter]).run_epoch()
    engine_ops = sum(counter.mode.ops.values())

    extra = engine_ops - bare_ops
    assert 0 < extra <= EXTRA_OPS_LIMIT, (extra, counter.mode.ops - counted.ops)
