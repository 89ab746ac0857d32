"""Multi-label training with what multi-class training has: AMP (bf16 and fp16 autocast on the
CPU), the NaN guard, EMA validation and exact resume on a label file with the settings users
train with. DDP is in test_distributed.py, TensorBoard and W&B in tests/hooks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from hooks import CheckpointHook
from tests.conftest import KillAfterEpoch, MultiLabelStandIn, make_engine
from tests.tools.test_resume import assert_equal
from trainer.checkpoint import load_checkpoint
from trainer.data import ImageFolderData
from trainer.data.label_sets import LabelSetSampler
from trainer.engine import Engine
from trainer.hook import Hook
from trainer.losses import build_loss
from trainer.models import build_model
from trainer.multilabel import average_precision, tuned_thresholds


class Record(Hook):
    """Each training batch's outputs and the weights after it, and the losses' dtypes."""

    def __init__(self) -> None:
        self.outputs: list[dict[str, torch.Tensor]] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.ema: list[dict[str, torch.Tensor]] = []
        self.loss_dtypes: set[torch.dtype] = set()

    def on_before_backward(self, engine: Engine, loss: torch.Tensor) -> None:
        self.loss_dtypes.add(loss.dtype)

    def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
        self.outputs.append(dict(outputs))
        self.weights.append({k: v.clone() for k, v in engine.model.state_dict().items()})
        if engine.ema is not None:
            self.ema.append({k: v.clone() for k, v in engine.ema.module.state_dict().items()})


class BCENaNAt:
    """Binary cross-entropy, except NaN on the given (0-based) training calls."""

    def __init__(self, bad: set[int]) -> None:
        self.bad, self.calls = bad, 0

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.binary_cross_entropy_with_logits(logits.float(), y.float())
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls - 1 in self.bad:
                return loss * float("nan")
        return loss


def _epoch_tally(outputs: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """An epoch's train/loss and train/acc (label accuracy) over its finite batches."""
    loss = acc = n = 0.0
    for o in outputs:
        if bool(o["finite"]):
            size = len(o["targets"])
            loss += float(o["loss"]) * size
            acc += float(((o["logits"] > 0) == (o["targets"] > 0.5)).float().mean(1).sum())
            n += size
    return loss / n, acc / n


@pytest.mark.parametrize(("precision", "loss"), [("bf16-mixed", "bce"), ("16-mixed", "asl")])
def test_multilabel_trains_under_autocast_on_the_cpu(precision: str, loss: str) -> None:
    record = Record()
    data = MultiLabelStandIn()
    engine = make_engine([record], data=data, max_epochs=2, precision=precision,
                         loss=build_loss(loss, num_images=len(data.train_y)))  # fmt: skip
    assert (engine.scaler is not None) == (precision == "16-mixed")  # fp16 scales its loss
    engine.fit()
    half = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    assert {o["logits"].dtype for o in record.outputs} == {half}  # the forward ran in half
    assert record.loss_dtypes == {torch.float32}  # the loss did not (ASL: not autocast's own)
    for row in engine.state.history:
        assert math.isfinite(row["train/loss"]) and 0 <= row["train/acc"] <= 1
        assert 0 <= row["val/mAP"] <= 1 and math.isfinite(row["val/loss"])
    assert engine.state.history[-1]["val/mAP"] > 0.5
    assert engine.state.thresholds is not None and len(engine.state.thresholds) == 3
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_multilabel_nan_loss_skips_the_step_and_the_tally(precision: str) -> None:
    record = Record()
    bad = 6  # epoch 1 (5 batches an epoch), batch 1
    engine = make_engine([record], data=MultiLabelStandIn(), loss=BCENaNAt({bad}),
                         max_epochs=2, precision=precision, ema_decay=0.9)  # fmt: skip
    engine.fit()
    assert len(record.outputs) == 10 and not bool(record.outputs[bad]["finite"])
    # The skipped step changed no parameter and no EMA weight.
    for before, after in ((record.weights[bad - 1], record.weights[bad]),
                          (record.ema[bad - 1], record.ema[bad])):  # fmt: skip
        for k, v in before.items():
            if v.dtype.is_floating_point and "running" not in k:
                assert torch.equal(v, after[k]), k
    h = engine.state.history
    assert h[1]["train/skipped_steps"] == 1 and "train/skipped_steps" not in h[0]
    # The epochs' loss and label accuracy count the finite batches alone, as recorded.
    for epoch in range(2):
        loss, acc = _epoch_tally(record.outputs[5 * epoch : 5 * epoch + 5])
        assert h[epoch]["train/loss"] == pytest.approx(loss, rel=1e-5)
        assert h[epoch]["train/acc"] == pytest.approx(acc, rel=1e-5)
    assert all(math.isfinite(row["val/mAP"]) for row in h)


def test_multilabel_validation_scores_the_ema_weights() -> None:
    data = MultiLabelStandIn()
    engine = make_engine(data=data, max_epochs=2, ema_decay=0.9)
    engine.fit()
    assert engine.ema is not None
    x, y = engine.to_device((data.val_x, data.val_y))
    with torch.no_grad():
        ema_logits = engine.ema.module.eval()(x).float()
        raw_logits = engine.model.eval()(x).float()
    last = engine.state.history[-1]
    positive = y > 0.5
    # val/loss, val/mAP and the tuned thresholds are the EMA weights', not the raw ones'.
    assert last["val/loss"] == pytest.approx(float(engine.loss_fn(ema_logits, y)), rel=1e-5)
    assert last["val/loss"] != pytest.approx(float(engine.loss_fn(raw_logits, y)), rel=1e-5)
    ap = average_precision(ema_logits.sigmoid(), positive)
    assert last["val/mAP"] == pytest.approx(float(ap[~ap.isnan()].mean()), rel=1e-6)
    table = engine.state.label_metrics
    assert table is not None
    tuned, _ = tuned_thresholds(ema_logits.sigmoid(), positive)
    assert table["threshold"] == pytest.approx(tuned.tolist(), abs=1e-6)


def test_multilabel_resume_on_a_label_file_is_exact(tmp_path: Path) -> None:
    """A JSONL set with random crops and flips, the balanced label-set sampler, EMA and fp16
    with its GradScaler: killed after epoch 1 of 2 and resumed, it equals the straight run."""
    from tests.tools.test_multilabel_cli import write_multilabel_set

    labels = write_multilabel_set(tmp_path / "data", n_train=16, n_val=8)

    def fit(out: Path, hooks: list[Hook], resume: Path | None = None) -> Engine:
        data = ImageFolderData(labels, img_size=16, batch_size=4, workers=0,
                               sampler="balanced", crop_scale=0.5)  # fmt: skip
        assert isinstance(data.sampler, LabelSetSampler)
        torch.manual_seed(0)
        engine = Engine(build_model("small_cnn", 3), data, max_epochs=2, device="cpu",
                        lr=3e-3, ema_decay=0.9, precision="16-mixed", sanity_steps=1,
                        hooks=[CheckpointHook(out), *hooks])  # fmt: skip
        engine.fit(resume=resume)
        return engine

    straight = fit(tmp_path / "a", [])
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b", [KillAfterEpoch(0)])
    resumed = fit(tmp_path / "b", [], resume=tmp_path / "b")
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in "ab")
    assert a["scaler"] is not None and a["ema"] is not None  # fp16 and EMA really ran
    for part in ("model", "ema", "optimizer", "scaler", "sampler", "rng"):
        assert_equal(a[part], b[part], part)
    rows = [[{k: v for k, v in r.items() if "time" not in k and "img_s" not in k} for r in h]
            for h in (straight.state.history, resumed.state.history)]  # fmt: skip
    assert rows[0] == rows[1] and len(rows[0]) == 2 and "val/mAP" in rows[0][0]
    assert a["state"]["thresholds"] == b["state"]["thresholds"] == resumed.state.thresholds
    assert straight.state.label_metrics == resumed.state.label_metrics
