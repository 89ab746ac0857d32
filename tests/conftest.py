"""Shared fixtures and fakes: a tiny image tree on disk, an in-memory data source
(``StandInData``) and the engine builder (``make_engine``, ``run_fit``)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer.data.sampler import TrackingWeightedRandomSampler
from trainer.engine import Engine
from trainer.hook import Hook
from trainer.io import atomic_write_json
from trainer.models import build_model

TINY_COUNTS: dict[str, int] = {"cat": 6, "dog": 5, "bird": 4}

# tools/train.py flags for a run that takes seconds on tiny trees.
FAST_CLI = ["--img-size", "16", "--batch-size", "8", "--workers", "0", "--model", "small_cnn",
            "--device", "cpu", "--quiet"]  # fmt: skip
# Every optional output off: for tests about the loop, not the artefacts.
NO_OUTPUTS = ["--no-confusion-matrix", "--no-dataset-stats", "--no-model-info",
              "--no-history-plots", "--no-sampler-stats", "--no-samples", "--no-export",
              "--no-report", "--no-per-class", "--no-calibration", "--no-most-confused",
              "--no-top-losses", "--log-every", "0"]  # fmt: skip


def tree_digest(root: Path, *, mtimes: bool = False) -> str:
    """A hash of every path and file under ``root`` (and their mtimes if asked)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            if mtimes:
                h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def make_tree(
    root: Path,
    counts: Mapping[str, int] | None = None,
    size: tuple[int, int] = (20, 16),
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/<i>.png|jpg`` random images and return ``root``.

    Args:
        root: folder to create the tree in (created if missing).
        counts: images per class, written in every split; defaults to ``TINY_COUNTS``.
        size: image size as PIL gives it, ``(width, height)``.
        splits: split folders to create; empty writes the class folders straight into ``root``.
        seed: seeds the pixel noise, so two calls with the same arguments write the same files.
    """
    counts = TINY_COUNTS if counts is None else counts
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for cls, n in counts.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                # Each class gets its own mean colour so a model could learn the tree.
                base = (sum(map(ord, cls)) % 7) * 30
                arr = rng.integers(base, base + 60, (size[1], size[0], 3), dtype=np.uint8)
                img = Image.fromarray(arr)
                if i % 2:
                    img.save(folder / f"{i}.jpg", quality=90)
                else:
                    img.save(folder / f"{i}.png")
    return root


@pytest.fixture(autouse=True, scope="session")
def _check_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The image checks' cache (trainer/data/check_cache.py) of the test trees stays out of
    # ~/.cache; set in the environment, so CLI subprocesses and spawned ranks use it too.
    os.environ["IMGTRAINER_CHECK_CACHE"] = str(tmp_path_factory.mktemp("check_cache"))
    # And the copies of --cache disk (trainer/data/disk_cache.py).
    os.environ["IMGTRAINER_IMAGE_CACHE"] = str(tmp_path_factory.mktemp("image_cache"))
    # The tools, scripts and kernels the tests start use one intra-op thread, as this process
    # does (_one_thread): on tiny images a second thread only spin-waits, and on a busy 2-core
    # machine that made each subprocess run ~1.5x slower. (This process's torch is already
    # initialised, so the variable changes only the children.)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny images gain nothing from intra-op threads, and on a busy 2-core machine their
    # spin-waits made the suite several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_tree(tmp_path: Path) -> Path:
    """A 3-class (cat 6, dog 5, bird 4 images per split) train/val tree of 20x16 images."""
    return make_tree(tmp_path / "tiny")


@pytest.fixture
def data() -> StandInData:
    """3 classes (train 12/7/3, val 5/4/3), 16x16 uint8 images, balanced tracking sampler."""
    return StandInData()


# --------------------------------------------------------------------- in-memory data, engines
CLASSES = ["cat", "dog", "bird"]
TRAIN_COUNTS = [12, 7, 3]
VAL_COUNTS = [5, 4, 3]


def _images(counts: Sequence[int], size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.cat([torch.full((n,), i, dtype=torch.int64) for i, n in enumerate(counts)])
    # Each class a different brightness, so the model learns something and plots differ.
    base = ((targets * 60) % 240).view(-1, 1, 1, 1)
    noise = torch.randint(0, 60, (len(targets), 3, size, size), generator=g)
    return (base + noise).to(torch.uint8), targets


class StandInData:
    """The attributes of ``ImageFolderData`` the hooks read, over in-memory uint8 tensors.

    Args:
        classes: class names, index order.
        train_counts: training images per class index.
        val_counts: validation images per class index.
        img_size: square image side.
        batch_size: loader batch size (the last val batch is usually short).
        sampler: a TrackingWeightedRandomSampler mode, or None for plain shuffling.
        float_images: yield normalised float images instead of uint8.
    """

    def __init__(
        self,
        classes: Sequence[str] = CLASSES,
        train_counts: Sequence[int] = TRAIN_COUNTS,
        val_counts: Sequence[int] = VAL_COUNTS,
        img_size: int = 16,
        batch_size: int = 5,
        sampler: str | None = "balanced",
        float_images: bool = False,
    ) -> None:
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.idx_to_class = dict(enumerate(self.classes))
        self.num_classes = len(self.classes)
        self.img_size = img_size
        self.batch_size = batch_size
        self.mean = (0.5, 0.4, 0.3)
        self.std = (0.25, 0.2, 0.2)
        self.class_counts = {
            "train": list(train_counts),
            "val": list(val_counts),
            "test": [0] * self.num_classes,
        }
        self.train_x, self.train_y = _images(train_counts, img_size, seed=0)
        self.val_x, self.val_y = _images(val_counts, img_size, seed=1)
        if float_images:
            m = torch.tensor(self.mean).view(1, 3, 1, 1)
            s = torch.tensor(self.std).view(1, 3, 1, 1)
            self.val_x = (self.val_x.float() / 255 - m) / s
            self.train_x = (self.train_x.float() / 255 - m) / s
        self.train_samples = [(Path(f"train/{i}.png"), int(t)) for i, t in enumerate(self.train_y)]
        self.val_samples = [(Path(f"val/{i}.png"), int(t)) for i, t in enumerate(self.val_y)]
        self.sampler = (
            TrackingWeightedRandomSampler(self.train_y.tolist(), self.num_classes, mode=sampler)
            if sampler is not None
            else None
        )

    @classmethod
    def sized(
        cls, n: int, num_classes: int = 3, batch_size: int = 16, sampler: str | None = "none"
    ) -> StandInData:
        """``n`` training and ``n`` validation images spread evenly over ``num_classes``
        classes named c0, c1, ...; by default drawn by a seeded, unweighted sampler."""
        counts = [n // num_classes + (i < n % num_classes) for i in range(num_classes)]
        return cls([f"c{i}" for i in range(num_classes)], counts, counts,
                   batch_size=batch_size, sampler=sampler)  # fmt: skip

    def train_loader(self) -> DataLoader[Any]:
        ds = TensorDataset(self.train_x, self.train_y)
        if self.sampler is not None:
            return DataLoader(ds, batch_size=self.batch_size, sampler=self.sampler)
        return DataLoader(
            ds, batch_size=self.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
        )

    def val_dataset(self) -> TensorDataset:
        return TensorDataset(self.val_x, self.val_y)

    def val_loader(self) -> DataLoader[Any]:
        return DataLoader(self.val_dataset(), batch_size=self.batch_size, shuffle=False)

    def test_loader(self) -> None:
        return None

    def labels_mapping(self) -> dict[str, Any]:
        return {
            "class_to_idx": dict(self.class_to_idx),
            "idx_to_class": {str(i): c for i, c in self.idx_to_class.items()},
            "num_classes": self.num_classes,
            "image_size": self.img_size,
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
        }

    def save_labels_mapping(self, path: Any) -> None:
        atomic_write_json(path, self.labels_mapping())


class MultiLabelStandIn(StandInData):
    """``StandInData`` as a multi-label set: each image carries its class's label (which its
    brightness shows) and, every third image, the next class's too; multi-hot float targets."""

    task = "multilabel"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.train_y, self.val_y = self._multi_hot(self.train_y), self._multi_hot(self.val_y)
        self.class_counts["train"] = [int(n) for n in self.train_y.sum(0).tolist()]
        self.class_counts["val"] = [int(n) for n in self.val_y.sum(0).tolist()]

    def _multi_hot(self, y: torch.Tensor) -> torch.Tensor:
        hot = torch.nn.functional.one_hot(y, self.num_classes).float()
        extra = (torch.arange(len(y)) % 3 == 0).float()[:, None]
        return (hot + extra * hot.roll(1, 1)).clamp(max=1)

    def labels_mapping(self) -> dict[str, Any]:
        return {**super().labels_mapping(), "task": "multilabel", "activation": "sigmoid"}


# The scalars of a multi-label epoch row (besides lr and times) that the loggers must send.
MULTILABEL_METRICS = ("train/loss", "train/acc", "val/loss", "val/mAP", "val/micro_f1",
                      "val/macro_f1", "val/macro_f1_tuned", "val/exact_match",
                      "val/hamming_loss")  # fmt: skip


class KillAfterEpoch(Hook):
    """Raises KeyboardInterrupt at the end of epoch ``epoch`` (from 0), once its checkpoint is
    written: a run that died there, to resume from."""

    order = 100  # after the checkpoint hook (90)

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch:
            raise KeyboardInterrupt


class NaNAt:
    """Cross-entropy, except NaN on the given (0-based) training calls."""

    def __init__(self, bad: set[int]) -> None:
        self.bad, self.calls = bad, 0

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits.float(), y)
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls - 1 in self.bad:
                return loss * float("nan")
        return loss


def make_engine(
    hooks: Sequence[Hook] = (), data: StandInData | None = None, **kwargs: Any
) -> Engine:
    """small_cnn on the stand-in data (default: ``StandInData.sized(64)``), on the CPU unless
    ``device=`` says otherwise, 2 epochs, seeded: the one engine builder of the tests."""
    data = data or StandInData.sized(64)
    torch.manual_seed(0)
    model = build_model("small_cnn", data.num_classes)
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("max_epochs", 2)
    kwargs.setdefault("lr", 3e-3)
    kwargs.setdefault("args", {"model": "small_cnn", "img_size": data.img_size})
    return Engine(model, data, hooks=list(hooks), **kwargs)


def run_fit(
    hooks: Sequence[Hook], data: StandInData | None = None, epochs: int = 2, **kwargs: Any
) -> Engine:
    """Fit ``make_engine`` on ``StandInData()`` (3 unequal classes) and return the engine."""
    kwargs.setdefault("sanity_steps", 2)
    engine = make_engine(hooks, data or StandInData(), max_epochs=epochs, **kwargs)
    engine.fit()
    return engine


def png_size(path: Path) -> tuple[int, int]:
    """Decode the PNG fully (not just the header) and return its (width, height)."""
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        return img.size


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=140, force_terminal=False)


def console_text(console: Console) -> str:
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def assert_survives_unwritable(
    make_hook: Callable[[Path], Hook], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Point the hook's out_dir at a regular file: the fit must finish and warn, naming it."""
    # A file where the run folder should be defeats mkdir even for root, unlike chmod.
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="trainer.hooks"):
        engine = run_fit([make_hook(blocked)], epochs=1)
    assert len(engine.state.history) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "trainer.hooks"]
    assert warnings, "expected a warning from trainer.hooks"
    assert all(str(blocked) in w for w in warnings)


# --------------------------------------------------------------------- processes of a group
RANK_PRELOAD = ["torch", "torchmetrics.classification", "tests.conftest", "tools.train",
                "tests.tools.crash_child"]  # fmt: skip


def join_as_rank(rank: int, world: int, port: int) -> None:
    """In a spawned test process: torchrun's variables for ``rank`` of ``world``, one thread."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)


def run_ranks(
    worker: Callable[..., None], *args: Any, world: int = 2, timeout: float = 120.0
) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` spawned processes, bounded in
    time: a hung collective fails the test instead of the suite."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    # Each rank a fresh process forked from a fork server that has imported torch and the
    # trainer once (a spawned rank took seconds to import them anew). The server is
    # multiprocessing's one per test session; the list is a superset of
    # tests/tools/test_crash_consistency.py's, so whichever test starts it, both get theirs.
    mp.set_forkserver_preload(RANK_PRELOAD)
    ctx = mp.start_processes(
        worker, args=(world, port, *args), nprocs=world, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{world}-process run did not finish in {timeout:.0f} s")
