"""Multi-label training and metrics: the losses, average precision and tuned thresholds
against scikit-learn, and a fit (metrics, monitor, thresholds, exact resume)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hooks import CheckpointHook
from tests.conftest import KillAfterEpoch, MultiLabelStandIn, make_engine
from trainer.data.mix import BatchMix
from trainer.losses import AsymmetricLoss, BinaryCrossEntropy, build_loss, positive_weights
from trainer.multilabel import average_precision, label_results, pr_curves, tuned_thresholds


def _scores(n: int = 60, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    positive = torch.rand(n, c, generator=g) < 0.3
    noisy = positive.float() * 0.4 + torch.rand(n, c, generator=g) * 0.6
    return (noisy * 10).round() / 10, positive  # rounded: many ties


def test_average_precision_and_pr_curve_match_scikit_learn_with_ties() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    probs, positive = _scores()
    ap = average_precision(probs, positive)
    precision, recall = pr_curves(probs, positive)
    for c in range(probs.shape[1]):
        want = metrics.average_precision_score(positive[:, c].numpy(), probs[:, c].numpy())
        assert ap[c].item() == pytest.approx(want, abs=1e-12)
        at = 50  # threshold 0.5
        pred = (probs[:, c] >= 0.5).numpy()
        assert precision[c, at].item() == pytest.approx(
            metrics.precision_score(positive[:, c].numpy(), pred))
        assert recall[c, at].item() == pytest.approx(metrics.recall_score(positive[:, c], pred))
    assert torch.isnan(average_precision(probs, torch.zeros_like(positive))).all()


def test_tuned_thresholds_reach_the_best_f1_of_any_threshold() -> None:
    probs, positive = _scores()
    positive[:, 3] = False  # a class without positives keeps 0.5
    cut, f1 = tuned_thresholds(probs, positive)
    assert cut[3] == 0.5 and f1[3] == 0
    for c in range(3):
        best = 0.0
        for t in probs[:, c].unique():
            pred = probs[:, c] >= t
            tp = (pred & positive[:, c]).sum().item()
            best = max(best, 2 * tp / (pred.sum().item() + positive[:, c].sum().item()))
        pred = probs[:, c] >= cut[c]
        tp = (pred & positive[:, c]).sum().item()
        assert 2 * tp / (pred.sum().item() + positive[:, c].sum().item()) == pytest.approx(best)
        assert f1[c].item() == pytest.approx(best)
    results = label_results(probs, positive, torch.full((4,), 0.5))
    assert results["exact"].item() == (((probs >= 0.5) == positive).all(1)).sum().item()


def test_multilabel_losses() -> None:
    logits, y = torch.randn(6, 4), (torch.rand(6, 4) < 0.4).float()
    bce = F.binary_cross_entropy_with_logits(logits, y)
    assert torch.allclose(BinaryCrossEntropy()(logits, y), bce)
    plain = AsymmetricLoss(1e-12, 0.0, 0.0)  # takes the general path: the same loss
    assert torch.allclose(plain(logits, y), bce, atol=1e-6)
    smooth = BinaryCrossEntropy(label_smoothing=0.2)(logits, y)
    assert torch.allclose(smooth, F.binary_cross_entropy_with_logits(logits, y * 0.8 + 0.1))
    asl = build_loss("asl", num_images=6)
    assert isinstance(asl, AsymmetricLoss) and asl(logits, y) < bce  # easy negatives weigh less
    w = positive_weights([2, 0, 5], 10)
    assert w.tolist() == [4.0, 1.0, 1.0]
    weighted = build_loss("ce", class_counts=[2, 3, 1, 6], num_images=6)
    assert weighted.pos_weight is not None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="multi-label"):
        build_loss("asl")


def test_mixup_mixes_label_vectors() -> None:
    x, y = torch.zeros(4, 3, 8, 8), torch.eye(3)[[0, 1, 2, 0]]
    y[0, 2] = 1.0
    _, soft = BatchMix(3, mixup=0.4, seed=0)(x, y, (0, 0))
    lam = soft[1, 1].item()  # image 1 (label 1) mixed with image 0 (labels 0 and 2)
    assert torch.allclose(soft[1], torch.tensor([1 - lam, lam, 1 - lam]))


def test_multilabel_fit_records_map_thresholds_and_monitors_map() -> None:
    engine = make_engine(data=MultiLabelStandIn(), max_epochs=2)
    assert engine.monitor == "val/mAP"
    engine.fit()
    row = engine.state.history[-1]
    for key in ("val/mAP", "val/micro_f1", "val/macro_f1", "val/exact_match",
                "val/hamming_loss", "train/loss", "train/acc"):  # fmt: skip
        assert 0 <= row[key] <= 1 or key.endswith("loss"), key
    assert row["val/mAP"] > 0.5
    table = engine.state.label_metrics
    assert table is not None and len(table["ap"]) == 3 and len(table["pr_recall"][0]) == 101
    assert engine.state.thresholds is not None and len(engine.state.thresholds) == 3
    probs = engine.predict(engine.data.val_loader())
    assert probs.shape == (len(engine.data.val_y), 3) and not torch.allclose(probs.sum(1),
                                                                              torch.ones(1))


def test_multilabel_resume_is_exact(tmp_path: Path) -> None:
    def engine(hooks: list) -> object:
        return make_engine(hooks, data=MultiLabelStandIn(), max_epochs=3, ema_decay=0.9)

    straight = engine([CheckpointHook(tmp_path / "a")])
    straight.fit()  # type: ignore[attr-defined]
    first = engine([CheckpointHook(tmp_path / "b"), KillAfterEpoch(0)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()  # type: ignore[attr-defined]
    probe = engine([])
    probe.load_checkpoint(tmp_path / "b")  # type: ignore[attr-defined]
    assert first.state.thresholds is not None  # type: ignore[attr-defined]
    assert probe.state.thresholds == first.state.thresholds  # type: ignore[attr-defined]
    resumed = engine([CheckpointHook(tmp_path / "b")])
    resumed.fit(resume=tmp_path / "b")  # type: ignore[attr-defined]
    for attr in ("model", "eval_model"):  # the raw weights and the EMA ones
        a = getattr(straight, attr).state_dict()
        b = getattr(resumed, attr).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), attr
    assert straight.state.thresholds == resumed.state.thresholds  # type: ignore[attr-defined]

    # The metric history too: val/mAP, and the F1 scores at the thresholds in force.
    def timeless(e: object) -> list[dict[str, float]]:
        rows = e.state.history  # type: ignore[attr-defined]
        return [{k: v for k, v in r.items() if "time" not in k and "img_s" not in k} for r in rows]

    assert timeless(resumed) == timeless(straight)
    assert resumed.state.label_metrics == straight.state.label_metrics  # type: ignore[attr-defined]

def test_a_mapping_with_bad_thresholds_is_refused() -> None:
    from trainer.onnx_mapping import OnnxModelError, validate_labels_mapping

    mapping = MultiLabelStandIn().labels_mapping()
    assert validate_labels_mapping({**mapping, "thresholds": [0.2, 0.5, 0.9]}, "m")["thresholds"]
    with pytest.raises(OnnxModelError, match="'thresholds' must hold 3 numbers"):
        validate_labels_mapping({**mapping, "thresholds": [0.5, 2.0, 0.5]}, "m")
