"""SampleVisualizationHook: a fixed set of validation images and the worst mistakes, per epoch."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hooks.render.plots import plot_grid, save_image
from trainer.artifacts import guarded
from trainer.distributed import get_rank, get_world_size, rank_zero_only
from trainer.hook import Hook
from trainer.metrics import keep_top
from trainer.run_files import PLOTS
from trainer.task import is_multilabel

if TYPE_CHECKING:
    from PIL import Image

    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")


class SampleVisualizationHook(Hook):
    """Draws predictions on validation images, from the outputs the engine already computed.

    Writes ``plots/samples/epoch_XXX_fixed.png``: the same validation images every epoch
    (picked once at fit start, seeded, spread over classes), with predicted and true labels
    and the predicted probability, framed green when right and red when wrong; and
    ``epoch_XXX_mistakes.png``: the epoch's most confident wrong predictions. ``XXX`` is
    ``engine.state.epoch`` (from 0, as in ``metrics.csv``). The sanity check is skipped.

    No second forward pass and no per-batch host read: an image's index is the one the
    validation loader names (``val_batch_indices``), right when it skipped an image.
    The fixed images' pixels are copied from the (host) batch, their logits kept as device
    slices; the mistakes are a running top-k on the device, of which only the dataset
    indices are read at the epoch end, and those few images are then re-read from the
    validation dataset (``data.val_dataset()`` or ``data.val_loader().dataset``).

    Multi-label data: the fixed grid captions the predicted and true label sets (at
    ``state.thresholds``, else 0.5; see ``label_set_records``); no mistakes grid.

    Under DDP rank ``r`` validates images ``r, r + world_size, ...`` (``ShardSampler``): the
    grids are drawn on rank 0, from its shard.

    Args:
        out_dir: the run folder.
        num_images: images in each grid.
        seed: picks the fixed images.

    Attributes:
        fixed_indices: validation indices of the fixed images, in display order.
        samples: the latest epoch's fixed images: dicts of index, true, pred, prob, correct.
        mistakes: the latest epoch's top mistakes, the same dicts, most confident first.
        figure: the latest fixed-images grid, a PIL image (a notebook shows it as it is);
            ``mistakes_figure`` the latest mistakes one.

    Example:
        >>> hook = SampleVisualizationHook("runs/a", num_images=25)
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> hook.figure  # in a notebook
    """

    order = 50

    def __init__(self, out_dir: str | os.PathLike[str], num_images: int = 16, seed: int = 0):
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.dir = Path(out_dir) / PLOTS / "samples"
        self.num_images = num_images
        self.seed = seed
        self.fixed_indices: list[int] = []
        self.samples: list[dict[str, Any]] = []
        self.mistakes: list[dict[str, Any]] = []
        self.fixed_images: dict[int, torch.Tensor] = {}
        self.figure: Image.Image | None = None
        self.mistakes_figure: Image.Image | None = None
        self._fixed: set[int] = set()
        self._seen = 0
        self._fixed_logits: dict[int, torch.Tensor] = {}
        self._fixed_targets: dict[int, torch.Tensor] = {}
        self._top: tuple[torch.Tensor, ...] | None = None  # score, index, pred, target

    def on_fit_start(self, engine: Engine) -> None:
        r, w = get_rank(), get_world_size()  # this rank's shard: indices r, r + w, ...
        samples = getattr(engine.data, "val_samples", None)
        if samples is not None:
            held = getattr(samples, "targets", None)  # a SampleArray's, without a Path each
            targets = [int(t) for t in (held if held is not None else (t for _, t in samples))]
            targets = targets[r::w]
            local = pick_stratified(targets, self.num_images, self.seed)
        else:  # no per-image labels to stratify by: the first images will do
            local = list(range(self.num_images))
        self.fixed_indices = [r + w * i for i in local]
        self._fixed = set(self.fixed_indices)

    def on_validation_epoch_start(self, engine: Engine) -> None:
        self._seen = 0
        self._fixed_logits, self._fixed_targets, self.fixed_images = {}, {}, {}
        self._top = None

    @rank_zero_only  # rank 0 draws the grids; the other ranks need not collect
    def on_validation_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        if engine.state.phase != "val":
            return
        images, logits, targets = batch[0], outputs["logits"], outputs["targets"]
        index = val_batch_indices(engine, self._seen, len(targets))  # a shape, not a device read
        self._seen += len(targets)
        if index is None:
            return
        for j, g in enumerate(index.tolist()):  # a host tensor
            if g not in self._fixed:
                continue
            # Copies, so the batch and its logits can be freed; they stay on the device (the
            # batch hooks get the images as the model does: normalised floats).
            self.fixed_images[g] = images[j].clone()
            self._fixed_logits[g] = logits[j].clone()
            self._fixed_targets[g] = targets[j].clone()
        if not is_multilabel(engine.data):  # multi-label: the fixed grid only
            self._update_mistakes(logits, targets, index.to(logits.device, non_blocking=True))

    def _update_mistakes(
        self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor
    ) -> None:
        conf, pred = logits.float().softmax(1).max(1)
        # Right answers and NaN scores rank below every mistake.
        score = torch.where((pred != targets) & conf.isfinite(), conf, -1.0)
        new: tuple[torch.Tensor, ...] = (score, index, pred, targets)
        self._top = keep_top(self._top, new, self.num_images)

    @rank_zero_only
    def on_validation_epoch_end(self, engine: Engine) -> None:
        if engine.state.phase != "val":
            return
        data: Any = engine.data
        classes: list[str] = list(data.classes)
        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        stem = self.dir / f"epoch_{engine.state.epoch:03d}"
        order = [g for g in self.fixed_indices if g in self._fixed_logits]
        if order:
            # One host read for all fixed images.
            logits = torch.stack([self._fixed_logits[g] for g in order]).float()
            targets = torch.stack([self._fixed_targets[g] for g in order])
            if is_multilabel(data):  # captions name the label sets, true and predicted
                self.samples, classes = label_set_records(
                    order, logits.sigmoid(), targets, engine.state.thresholds, classes
                )
            else:
                prob, pred = (t.tolist() for t in logits.softmax(1).max(1))
                self.samples = _records(order, targets.tolist(), pred, prob)
            self._draw(
                engine,
                "figure",
                stem.parent / f"{stem.name}_fixed.png",
                [self.fixed_images[g].cpu() for g in order],
                list(self.samples),
                classes,
                mean,
                std,
                f"Fixed validation images, epoch {engine.state.epoch + 1}",
            )
        self._fixed_logits, self._fixed_targets = {}, {}
        if self._top is not None:
            score, index, pred_t, true_t = (t.tolist() for t in self._top)
            self._top = None
            wrong = [i for i, s in enumerate(score) if s >= 0]
            self.mistakes = _records(
                [index[i] for i in wrong],
                [true_t[i] for i in wrong],
                [pred_t[i] for i in wrong],
                [score[i] for i in wrong],
            )
            path = stem.parent / f"{stem.name}_mistakes.png"
            images: list[torch.Tensor | None] = []
            with guarded(path):  # the dataset is read here, not on the writer thread
                images = read_val_images(data, [m["index"] for m in self.mistakes])
                self._draw(
                    engine,
                    "mistakes_figure",
                    path,
                    images,
                    list(self.mistakes),
                    classes,
                    mean,
                    std,
                    f"Most confident mistakes, epoch {engine.state.epoch + 1}",
                )

    def _draw(
        self,
        engine: Engine,
        attr: str,
        path: Path,
        images: list[torch.Tensor | None],
        records: list[dict[str, Any]],
        classes: list[str],
        mean: Any,
        std: Any,
        title: str,
    ) -> None:
        """Queue a grid on the run's artefact writer; it lands in ``self.<attr>`` and at ``path``."""

        def job() -> None:
            grid = plot_grid(images, records, classes, mean, std, title)
            setattr(self, attr, grid)
            save_image(grid, path)

        engine.artifacts.submit(job, path)


def pick_stratified(targets: list[int], k: int, seed: int) -> list[int]:
    """Up to ``k`` indices, taking classes in turn (seeded order inside each); sorted by class."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    for pool in by_class.values():
        rng.shuffle(pool)
    picked: list[int] = []
    depth = 0
    while len(picked) < min(k, len(targets)):
        for c in sorted(by_class):
            if depth < len(by_class[c]) and len(picked) < k:
                picked.append(by_class[c][depth])
        depth += 1
    return sorted(picked, key=lambda i: (targets[i], i))


def _records(
    index: list[int], true: list[int], pred: list[int], prob: list[float]
) -> list[dict[str, Any]]:
    return [
        {"index": g, "true": t, "pred": p, "prob": round(float(q), 4), "correct": t == p}
        for g, t, p, q in zip(index, true, pred, prob, strict=True)
    ]


def label_set_records(
    index: list[int],
    probs: torch.Tensor,
    targets: torch.Tensor,
    thresholds: list[float] | None,
    classes: list[str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Multi-label grid records: ``true`` and ``pred`` index the returned names, one per label
    set (labels joined by ","; "-" for none); ``prob`` is the highest probability, and an image
    is right when its predicted set is its true set."""
    cut = torch.tensor(thresholds) if thresholds else torch.full((len(classes),), 0.5)
    pred_sets, true_sets = (probs.cpu() >= cut).tolist(), (targets.cpu() > 0.5).tolist()
    names: list[str] = []

    def name(flags: list[bool]) -> int:
        text = ",".join(c for c, on in zip(classes, flags, strict=True) if on) or "-"
        if text not in names:
            names.append(text)
        return names.index(text)

    records = [
        {"index": g, "true": name(t), "pred": name(p), "prob": round(float(q), 4),
         "correct": t == p}
        for g, t, p, q in zip(index, true_sets, pred_sets, probs.max(1).values.tolist(), strict=True)
    ]  # fmt: skip
    return records, names


def val_batch_indices(engine: Any, start: int, size: int) -> torch.Tensor | None:
    """The validation dataset indices (a host int64 tensor) of the batch just scored.

    The loader's ``indices`` where it names them (``SkippingLoader``: right when it skipped an
    image); else, for a loader that names none (a custom data object's, which skips none), the
    ``start`` images before the batch counted, mapped to this rank's shard. None when the named
    ones do not match the batch's ``size`` (``--decode gpu`` dropped an image on the device):
    the caller leaves that batch out rather than mislabel it.
    """
    named = getattr(getattr(engine, "val_loader", None), "indices", None)
    if named is None:
        return get_rank() + get_world_size() * torch.arange(start, start + size)
    return named if len(named) == size else None


def read_val_images(data: Any, indices: list[int]) -> list[torch.Tensor | None]:
    """The validation images at ``indices``, re-read with the validation preprocessing."""
    if not indices:
        return []
    make = getattr(data, "val_dataset", None)
    dataset = make() if callable(make) else getattr(data.val_loader(), "dataset", None)
    if dataset is None:
        log.info("no indexable validation dataset: the images are not drawn")
        return [None] * len(indices)
    return [dataset[i][0] for i in indices]
