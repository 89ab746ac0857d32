"""DDP on the CPU: 2 gloo processes against 1 process with the same global batch.

The 2-process runs are started by the tests themselves (``torch.multiprocessing.spawn``, and
``torch.distributed.run`` for the CLI), each bounded in time. One spawn runs several scenarios,
because starting the processes costs more than the tiny runs.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from hooks import default_hooks
from hooks.checkpoint import CheckpointHook
from hooks.confusion_matrix import ConfusionMatrixHook
from hooks.label_issues import LabelIssuesHook
from hooks.sample_visualization import SampleVisualizationHook
from hooks.sampler_distribution import SamplerDistributionHook
from hooks.top_losses import TopLossesHook
from tests.conftest import KillAfterEpoch, join_as_rank, make_tree, run_ranks
from trainer.checkpoint import load_checkpoint
from trainer.data import ImageFolderData, ImageListDataset, val_transform
from trainer.data.sampler import ShardSampler, TrackingWeightedRandomSampler
from trainer.distributed import destroy_distributed, init_distributed
from trainer.engine import Engine
from trainer.errors import Interrupted
from trainer.hook import Hook

REPO = Path(__file__).resolve().parents[2]
# 16 training images: an even draw, so 2 ranks need no padding and see exactly the images
# 1 process sees. 13 validation images: the ranks' val shards differ in size (7 and 6).
TRAIN_COUNTS = {"bird": 4, "cat": 8, "dog": 4}
VAL_COUNTS = {"bird": 5, "cat": 4, "dog": 4}
BATCH = 4  # per rank; the 1-process run uses 2 * BATCH
EPOCHS = 2
# The multi-label set under the module's tmp folder: 16 training images, 13 validation ones.
MULTILABEL = "multilabel/labels.jsonl"
# How long a rank waits in a collective of the signal scenario before giving up.
STOP_WAIT = timedelta(seconds=15)


# ------------------------------------------------------------------------ sampler, no processes
@pytest.mark.parametrize("mode", ["none", "balanced", "manual"])
@pytest.mark.parametrize("n", [16, 15])
def test_union_of_rank_draws_is_the_single_process_draw(mode: str, n: int) -> None:
    targets = [i % 3 for i in range(n)]
    weights = {0: 3.0, 1: 1.0} if mode == "manual" else None

    def sampler(replicas: int, rank: int) -> TrackingWeightedRandomSampler:
        s = TrackingWeightedRandomSampler(
            targets, 3, mode=mode, class_weights=weights, seed=7, num_replicas=replicas, rank=rank
        )
        s.set_epoch(3)
        return s

    single = torch.tensor(list(sampler(1, 0)))
    shards = [list(sampler(2, r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    merged = torch.tensor(shards).T.flatten()  # rank r holds every 2nd index from r
    # The union is the single-process draw, plus one wrapped index when n is odd.
    assert torch.equal(merged[:n], single)
    assert torch.equal(merged[n:], single[: len(merged) - n])


def test_unweighted_draw_is_distributed_samplers() -> None:
    targets = [i % 3 for i in range(11)]
    for rank in range(2):
        ours = TrackingWeightedRandomSampler(
            targets, 3, mode="none", seed=5, num_replicas=2, rank=rank
        )
        theirs = DistributedSampler(range(11), num_replicas=2, rank=rank, shuffle=True, seed=5)
        for epoch in range(3):
            ours.set_epoch(epoch)
            theirs.set_epoch(epoch)
            assert list(ours) == list(theirs)


def test_eval_shards_cover_every_sample_once() -> None:
    shards = [list(ShardSampler(13, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(13))
    assert [len(s) for s in shards] == [5, 4, 4]


# ------------------------------------------------------------------------ 2 processes
class FixedData(ImageFolderData):
    """Training without random augmentation, so 1 and 2 processes see identical pixels."""

    def train_dataset(self) -> ImageListDataset:
        return self._dataset("train", val_transform(self.img_size))


def tiny_model(num_classes: int) -> nn.Module:
    # No BatchNorm: its batch statistics would differ between a batch of 8 and two of 4.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32, num_classes),
    )


def make_engine(root: Path, batch: int, hooks: list[Hook], epochs: int = EPOCHS) -> Engine:
    data = FixedData(root, img_size=16, batch_size=batch, workers=0, sampler="balanced")
    return Engine(
        tiny_model(data.num_classes),
        data,
        max_epochs=epochs,
        lr=1e-2,
        warmup_epochs=0,
        device="cpu",
        hooks=hooks,
        sanity_steps=1,
    )


class RecordDraws(Hook):
    """Gathers every epoch's global draw (a collective, so every rank records)."""

    def __init__(self) -> None:
        self.draws: list[torch.Tensor] = []

    def on_train_epoch_end(self, engine: Engine) -> None:
        sampler: Any = engine.data.sampler  # type: ignore[attr-defined]
        self.draws.append(sampler.global_indices())
        counts = sampler.global_class_counts()
        assert (
            counts
            == torch.bincount(
                sampler.targets[self.draws[-1]], minlength=engine.data.num_classes
            ).tolist()
        )


class SignalRank1(Hook):
    """Rank 1 sends itself SIGTERM in the middle of the second epoch."""

    def on_train_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
        if engine.rank == 1 and engine.state.epoch == 1 and i == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def _worker(rank: int, world: int, port: int, root: Path, tmp: Path) -> None:
    join_as_rank(rank, world, port)
    # Every file write goes through os.replace (atomic writes): count those of rank 1.
    writes: list[str] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        writes.append(str(dst))
        real_replace(src, dst, *a, **k)

    os.replace = spy  # type: ignore[assignment]
    assert init_distributed("cpu")
    try:
        # A straight run with every default hook but export (the ONNX hook checks rank itself).
        out = tmp / "straight"
        draws = RecordDraws()
        hooks = default_hooks(out, progress=False, export=False, log_every=3,
                              find_label_issues=True)  # fmt: skip
        hooks = [*hooks, draws]
        engine = make_engine(root, BATCH, hooks)
        engine.fit()
        val = engine.validate()
        cm_hook = next(h for h in hooks if isinstance(h, ConfusionMatrixHook))
        vis = next(h for h in hooks if isinstance(h, SampleVisualizationHook))
        top = next(h for h in hooks if isinstance(h, TopLossesHook))
        sd = next(h for h in hooks if isinstance(h, SamplerDistributionHook))
        issues = next(h for h in hooks if isinstance(h, LabelIssuesHook))

        # Killed after epoch 0 (checkpoint written), then resumed to the end, under DDP.
        with pytest.raises(KeyboardInterrupt):
            killed = default_hooks(tmp / "b", progress=False, export=False, log_every=3)
            make_engine(root, BATCH, [*killed, KillAfterEpoch(0)]).fit()
        resumed_hooks = default_hooks(tmp / "b", progress=False, export=False, log_every=3)
        resumed = make_engine(root, BATCH, resumed_hooks)
        resumed.fit(resume=tmp / "b")

        # Multi-label: each rank scores its val shard; the probabilities are gathered.
        multilabel = make_engine(tmp / MULTILABEL, BATCH, [])
        multilabel.fit()
        multilabel_val = multilabel.validate()

        signal_exit = _stop_after_a_signal_to_rank_1(rank, world, root, tmp)

        torch.save(
            {
                "history": engine.state.history,
                "val": val,
                "model": engine.model.state_dict(),
                "draws": draws.draws,
                "confusion": cm_hook.matrix,
                "mistakes": vis.mistakes,
                "top_losses": top.losses,
                "aum": issues.scores(),
                "label_issues": issues.issues,
                "fixed": vis.fixed_indices,
                "sampler_rows": sd.rows,
                "resumed_model": resumed.model.state_dict(),
                "resumed_history": resumed.state.history,
                "step_log": engine.state.step_log,
                "resumed_step_log": resumed.state.step_log,
                "writes": writes,
                "signal_exit": signal_exit,
                "ml_history": multilabel.state.history,
                "ml_val": multilabel_val,
                "ml_model": multilabel.model.state_dict(),
                "ml_thresholds": multilabel.state.thresholds,
                "ml_label_metrics": multilabel.state.label_metrics,
            },
            tmp / f"rank{rank}.pt",
        )
    finally:
        destroy_distributed()


def _stop_after_a_signal_to_rank_1(rank: int, world: int, root: Path, tmp: Path) -> Any:
    """SIGTERM to rank 1 alone, mid-epoch: ``(exit code, step)`` of this rank's stop, or
    what went wrong instead.

    In a group of its own whose collectives give up after ``STOP_WAIT`` s: without the
    ranks' agreement, one would leave while the other waits for it in the next gradient
    all-reduce, and the test would only see the spawn's time limit. With it, the wait ends
    in an error here, and the test's assertion names it.
    """
    destroy_distributed()
    store = dist.FileStore(str(tmp / "signal.store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                            timeout=STOP_WAIT)  # fmt: skip
    stopped = make_engine(root, BATCH, [CheckpointHook(tmp / "c"), SignalRank1()], epochs=3)
    try:
        stopped.fit()
    except Interrupted as e:
        return (e.exit_code, stopped.state.step)
    except Exception as e:  # a collective that gave up: the ranks did not stop together
        return (f"{type(e).__name__}: {e}"[:300], stopped.state.step)
    return ("not stopped", stopped.state.step)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_tree(tmp / "tree", counts=TRAIN_COUNTS, size=(16, 16), splits=("train",))
    make_tree(root, counts=VAL_COUNTS, size=(16, 16), splits=("val",), seed=1)
    from tests.tools.test_multilabel_cli import write_multilabel_set

    write_multilabel_set((tmp / MULTILABEL).parent, n_train=16, n_val=13)
    run_ranks(_worker, root, tmp)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"root": root, "tmp": tmp, "ranks": ranks}


def test_two_processes_match_one_with_the_same_global_batch(ddp: dict[str, Any]) -> None:
    issues = LabelIssuesHook(ddp["tmp"] / "single")
    single = make_engine(ddp["root"], 2 * BATCH, [issues])
    single.fit()
    r0, r1 = ddp["ranks"]
    # Label issues: each rank records its own draws, summed over the ranks each epoch, so
    # every rank holds the single process's scores; rank 0 alone lists them.
    for got in (r0["aum"], r1["aum"]):
        assert torch.equal(got[1], issues.scores()[1])  # draws per sample
        assert torch.allclose(got[0], issues.scores()[0], rtol=1e-4, atol=1e-4, equal_nan=True)
    assert len(r0["label_issues"]) == len(issues.issues) and r1["label_issues"] == []
    for key in ("train/loss", "val/loss", "val/acc", "train/acc"):
        one = [row[key] for row in single.state.history]
        two = [row[key] for row in r0["history"]]
        assert two == pytest.approx(one, rel=1e-4, abs=1e-5), key
    # Every rank holds the same (reduced) history and weights.
    assert [r["val/acc"] for r in r0["history"]] == [r["val/acc"] for r in r1["history"]]
    for k, v in r0["model"].items():
        assert torch.equal(v, r1["model"][k]), k
        assert torch.allclose(v, single.model.state_dict()[k], rtol=1e-4, atol=1e-5), k


def test_union_of_ddp_draws_is_the_single_process_draw(ddp: dict[str, Any]) -> None:
    data = FixedData(ddp["root"], img_size=16, batch_size=8, workers=0, sampler="balanced")
    for epoch, draw in enumerate(ddp["ranks"][0]["draws"]):
        data.sampler.set_epoch(epoch)
        assert torch.equal(draw, torch.tensor(list(data.sampler)))
    rows = ddp["ranks"][0]["sampler_rows"]  # [epoch, class, name, dataset, expected, drawn]
    for epoch in range(EPOCHS):
        drawn = [r[5] for r in rows if r[0] == epoch]
        assert (
            drawn
            == torch.bincount(
                data.sampler.targets[ddp["ranks"][0]["draws"][epoch]], minlength=3
            ).tolist()
        )


def test_val_metrics_equal_single_process_ones(ddp: dict[str, Any]) -> None:
    r0, r1 = ddp["ranks"]
    hook = ConfusionMatrixHook(ddp["tmp"] / "single")
    single = make_engine(ddp["root"], 2 * BATCH, [hook])
    single.model.load_state_dict(r0["model"])
    val = single.validate()
    assert r0["val"]["val/acc"] == val["val/acc"] == r1["val"]["val/acc"]
    assert r0["val"]["val/loss"] == pytest.approx(val["val/loss"], rel=1e-6)
    # The hook's matrix is the global one: every validation image counted exactly once.
    assert int(r0["confusion"].sum()) == sum(VAL_COUNTS.values())
    assert torch.equal(r0["confusion"], hook.matrix)


def test_multilabel_ddp_matches_one_process_and_gathers_validation(ddp: dict[str, Any]) -> None:
    r0, r1 = ddp["ranks"]
    single = make_engine(ddp["tmp"] / MULTILABEL, 2 * BATCH, [])
    assert single.data.task == "multilabel"
    single.fit()
    for key in ("train/loss", "train/acc", "val/loss", "val/mAP", "val/macro_f1_tuned"):
        one = [row[key] for row in single.state.history]
        assert [row[key] for row in r0["ml_history"]] == pytest.approx(one, rel=1e-4), key
    assert r0["ml_thresholds"] == r1["ml_thresholds"] is not None
    # The same weights on one process: the metrics, per-class results and tuned thresholds
    # of the 2 shards (7 and 6 images) gathered are those of the 13 images in one process.
    single.model.load_state_dict(r0["ml_model"])
    single.state.thresholds = r0["ml_thresholds"]
    val = single.validate()
    table = single.state.label_metrics
    assert table is not None and set(val) == set(r0["ml_val"])
    for r in (r0, r1):
        for key, value in val.items():
            if not key.endswith("/time"):
                assert r["ml_val"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        for key in ("threshold", "ap", "f1", "support", "tp", "fp", "fn", "tn"):
            assert r["ml_label_metrics"][key] == pytest.approx(table[key], abs=1e-6), key
    counts = zip(*(table[k] for k in ("tp", "fp", "fn", "tn")), strict=True)
    assert all(sum(c) == sum(VAL_COUNTS.values()) for c in counts)  # every val image once


def test_rank_zero_writes_every_file_once(ddp: dict[str, Any]) -> None:
    r0, r1 = ddp["ranks"]
    assert r1["writes"] == []
    assert r0["writes"]
    out = ddp["tmp"] / "straight"
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "sampler_distribution.csv"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "plots" / "confusion_matrix").glob("*.json")) == [
        f"epoch_{e:03d}.json" for e in range(EPOCHS)
    ]


def test_sample_grids_map_rank_zero_shard_to_dataset_indices(ddp: dict[str, Any]) -> None:
    data = FixedData(ddp["root"], img_size=16, batch_size=8, workers=0)
    r0 = ddp["ranks"][0]
    assert r0["fixed"] and all(i % 2 == 0 for i in r0["fixed"])
    for m in r0["mistakes"]:
        assert m["index"] % 2 == 0
        assert m["true"] == data.val_samples[m["index"]][1]


def test_top_losses_map_rank_zero_shard_to_dataset_paths(ddp: dict[str, Any]) -> None:
    data = FixedData(ddp["root"], img_size=16, batch_size=8, workers=0)
    r0, r1 = ddp["ranks"]
    assert r1["top_losses"] == []  # rank 0 lists its shard; rank 1 collects nothing
    assert len(r0["top_losses"]) == (sum(VAL_COUNTS.values()) + 1) // 2  # rank 0: 0, 2, ... 12
    for t in r0["top_losses"]:
        path, label = data.val_samples[t["index"]]
        assert t["index"] % 2 == 0 and t["path"] == str(path)
        assert t["given"] == Path(path).parent.name == data.classes[label]
    losses = [t["loss"] for t in r0["top_losses"]]
    assert losses == sorted(losses, reverse=True)
    assert (ddp["tmp"] / "straight" / "top_losses.csv").is_file()


def test_resume_under_ddp_continues_exactly(ddp: dict[str, Any]) -> None:
    r0, r1 = ddp["ranks"]

    def strip(h: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in r.items() if "time" not in k and "img_s" not in k} for r in h]

    assert strip(r0["resumed_history"]) == strip(r0["history"])
    # steps.csv (a row at step 3 of 4, across the epoch end resumed from): sums over the ranks.
    assert r0["step_log"] and strip(r0["step_log"]) == strip(r1["step_log"])
    assert strip(r0["resumed_step_log"]) == strip(r0["step_log"])
    for k, v in r0["model"].items():
        assert torch.equal(v, r0["resumed_model"][k]), k
        assert torch.equal(v, r1["resumed_model"][k]), k


# ------------------------------------------------------------------------ the CLI under torchrun
def test_torchrun_cli_runs_two_processes(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", counts={"bird": 8, "cat": 8, "dog": 8}, size=(16, 16))
    common = [
        "tools/train.py", "--data", str(root), "--device", "cpu", "--model", "small_cnn",
        "--img-size", "16", "--epochs", "2", "--workers", "0", "--quiet", "--no-export",
        "--no-samples", "--no-history-plots",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    with open(tmp_path / "two" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert (tmp_path / "two" / "checkpoints" / "last.pt").is_file()
    assert float(rows[-1]["val/acc"]) >= 0  # a real number, reduced over both ranks


def _one_rank_worker(rank: int, world: int, port: int, root: Path, out: Path) -> None:
    join_as_rank(rank, world, port)
    assert init_distributed("cpu")  # torchrun --nproc_per_node 1: a group of one
    try:
        hooks = default_hooks(out, progress=False, samples=False, history_plots=False)
        engine = make_engine(root, BATCH, hooks)
        assert isinstance(engine._ddp, nn.parallel.DistributedDataParallel)
        engine.fit()
    finally:
        destroy_distributed()


def test_one_process_under_torchrun_trains_through_ddp_and_exports(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", counts=TRAIN_COUNTS, size=(16, 16))
    run_ranks(_one_rank_worker, root, tmp_path / "run", world=1)
    assert (tmp_path / "run" / "model.onnx").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(ddp: dict[str, Any]) -> None:
    """No rank is left in a collective: both leave with 143 after step 1 of epoch 1, and
    rank 0 writes interrupted.pt of that step (a collective itself: every rank's RNG)."""
    steps_per_epoch = len(make_engine(ddp["root"], 2 * BATCH, []).train_loader)
    expected = (143, steps_per_epoch + 1)
    assert [r["signal_exit"] for r in ddp["ranks"]] == [expected, expected]
    emergency = load_checkpoint(ddp["tmp"] / "c" / "checkpoints" / "interrupted.pt")
    assert emergency["state"]["step"] == steps_per_epoch + 1
    assert len(emergency["rng_per_rank"]) == 2
