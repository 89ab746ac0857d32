"""LabelIssuesHook: training images whose label looks wrong, by their area under the margin."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hooks.render.plots import plot_grid, save_image
from trainer.artifacts import guarded
from trainer.data.dataset import ImageListDataset
from trainer.distributed import all_reduce_sum, get_world_size, rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_csv
from trainer.run_files import LABEL_ISSUES_CSV, PLOTS
from trainer.task import is_multilabel

if TYPE_CHECKING:
    from PIL import Image

    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")

HEADER = ["path", "given", "suggested", "score", "suggested_prob", "index"]
PNG_NAME = "label_issues.png"


def margins(logits: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """Per row: the logit of the ``given`` class minus the largest other logit.

    Negative where the model prefers another class to the given label.

    Example:
        >>> margins(torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([2]))
        tensor([-1.])
    """
    own = logits.gather(1, given[:, None]).squeeze(1)
    others = logits.scatter(1, given[:, None], -math.inf).amax(1)
    return own - others


class LabelIssuesHook(Hook):
    """Ranks the training images by their area under the margin (AUM, Pleiss et al. 2020).

    Each time a training image is drawn, its margin is the logit of its given label minus
    the largest other logit, from the logits the engine already computed (no second forward
    pass). An image's score is the mean of its margins over the run: an image the model keeps
    assigning to another class, against its label, scores low (negative), and is likely
    mislabelled. The suggested label is the class of highest mean softmax over its draws.

    The logits are those of the images the model saw: with MixUp/CutMix, of the mixed ones,
    scored against the image's own (unmixed) label, which blurs the scores. Steps whose loss
    was not finite are left out.

    Which samples a batch holds comes from the training loader (``SkippingLoader.indices``:
    each item carries its dataset index through the collate, so skipped images and replaced
    batches are accounted for). A loader without indices (a custom data object) records
    nothing, and a batch whose length differs from its indices (``--decode gpu`` dropping an
    image that failed on the device) is left out. The per-sample sums live on the device;
    at each epoch end they are summed over the DDP ranks (every rank records the samples it
    drew) and read to the host once. They are kept in the hook's state, so a resumed run
    continues the record. Memory: ``N * (C + 2)`` floats on the device (N training images,
    C classes), and on the host and in each checkpoint ``N * C + 2 * N * epochs`` floats
    (1.28M images and 1000 classes: 5 GB on the device; a large set wants a subset).

    At the end of fit, rank 0 writes ``label_issues.csv``, every drawn training image, most
    suspicious (lowest score) first: ``path``, ``given``, ``suggested`` (class names),
    ``score`` (AUM), ``suggested_prob`` (its mean softmax), ``index`` (in the training
    samples) and ``margin_1, margin_2, ...``, the mean margin of each epoch (empty where the
    image was not drawn); and ``plots/label_issues.png``, the ``num_images`` first as
    thumbnails (``pred`` is the suggested label, ``true`` the given one). Nothing is moved.

    Args:
        out_dir: the run folder.
        num_images: images drawn in the grid.

    Attributes:
        issues: after fit, the rows of the CSV as dicts (``margins`` a list per epoch).
        figure: the grid, a PIL image.

    Example:
        >>> hook = LabelIssuesHook("runs/a")
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> [(r["path"], r["given"], r["suggested"]) for r in hook.issues[:5]]
    """

    order = 50

    def __init__(self, out_dir: str | os.PathLike[str], num_images: int = 16) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.csv_path = Path(out_dir) / LABEL_ISSUES_CSV
        self.png_path = Path(out_dir) / PLOTS / PNG_NAME
        self.num_images = num_images
        self.issues: list[dict[str, Any]] = []
        self.figure: Image.Image | None = None
        # Host record: per epoch, each sample's margin sum and draw count; softmax sums.
        self.epoch_sums: list[torch.Tensor] = []
        self.epoch_counts: list[torch.Tensor] = []
        self.prob_sums: torch.Tensor | None = None
        self._acc: torch.Tensor | None = None  # device: (N, 2 + C) margin sum, count, softmax
        self._missed = 0

    def on_train_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        if is_multilabel(engine.data):  # margins need one label per image: off
            return
        loader: Any = engine.train_loader
        index = getattr(loader, "indices", None)
        logits = outputs["logits"].float()
        if index is None or len(index) != logits.shape[0]:  # shapes only: no device read
            self._missed += 1
            return
        given = outputs["targets"]
        if given.ndim > 1:  # soft labels from the data: the label is the most probable class
            given = given.argmax(1)
        if self._acc is None:
            self._acc = torch.zeros(len(loader.dataset), 2 + logits.shape[1], device=logits.device)
        margin = margins(logits, given)
        ok = torch.isfinite(margin) & outputs["finite"].to(torch.bool)
        rows = torch.cat([margin[:, None], torch.ones_like(margin)[:, None], logits.softmax(1)], 1)
        rows = torch.where(ok[:, None], rows, 0.0)
        self._acc.index_add_(0, index.to(logits.device, non_blocking=True), rows)

    def on_train_epoch_end(self, engine: Engine) -> None:
        if self._missed:
            log.info("label issues: %d training batch(es) had no sample indices; left out",
                     self._missed)  # fmt: skip
            self._missed = 0
        if self._acc is None:
            return
        acc = all_reduce_sum(self._acc) if get_world_size() > 1 else self._acc
        host = acc.to("cpu", copy=True)  # the one host read of the epoch (a copy: zeroed next)
        self._acc.zero_()
        self.epoch_sums.append(host[:, 0].clone())
        self.epoch_counts.append(host[:, 1].clone())
        probs = host[:, 2:]
        self.prob_sums = probs.clone() if self.prob_sums is None else self.prob_sums + probs

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(AUM per training sample, NaN where never drawn; draws per sample)``."""
        total = torch.stack(self.epoch_sums).double().sum(0)
        count = torch.stack(self.epoch_counts).double().sum(0)
        return total / count, count

    @rank_zero_only
    def on_fit_end(self, engine: Engine) -> None:
        if not self.epoch_sums or self.prob_sums is None:
            return
        data: Any = engine.data
        classes = [str(c) for c in data.classes]
        samples = getattr(data, "train_samples", None)
        score, count = self.scores()
        drawn = torch.nonzero(count > 0).squeeze(1)
        order = drawn[torch.argsort(score[drawn], stable=True)]  # lowest score first
        mean_prob = self.prob_sums / count.clamp(min=1)[:, None]
        prob, suggested = mean_prob.max(1)
        per_epoch = torch.stack(self.epoch_sums, 1) / torch.stack(self.epoch_counts, 1)
        self.issues, table = [], []
        for i in order.tolist():
            path = str(samples[i][0]) if samples is not None else ""
            given = int(samples[i][1]) if samples is not None else -1
            row = {
                "index": i, "path": path, "given": classes[given] if given >= 0 else "",
                "given_index": given, "suggested": classes[int(suggested[i])],
                "suggested_index": int(suggested[i]), "score": round(float(score[i]), 4),
                "suggested_prob": round(float(prob[i]), 4),
                "margins": [None if math.isnan(m) else round(m, 4) for m in per_epoch[i].tolist()],
            }  # fmt: skip
            self.issues.append(row)
            cells = ["" if m is None else m for m in row["margins"]]
            table.append([*(row[k] for k in HEADER), *cells])
        header = HEADER + [f"margin_{e + 1}" for e in range(per_epoch.shape[1])]
        csv_path = self.csv_path
        engine.artifacts.submit(
            lambda: atomic_write_csv(csv_path, header, table), csv_path, replace=True
        )
        self._draw(engine, classes)

    def _draw(self, engine: Engine, classes: list[str]) -> None:
        data: Any = engine.data
        top = self.issues[: self.num_images]
        records = [
            {"index": r["index"], "true": r["given_index"], "pred": r["suggested_index"],
             "prob": r["suggested_prob"], "correct": r["given_index"] == r["suggested_index"]}
            for r in top
        ]  # fmt: skip
        with guarded(self.png_path):  # the images are read here, not on the writer thread
            samples = getattr(data, "train_samples", None)
            pipeline = getattr(data, "val_pipeline", None)
            if samples is None or pipeline is None or any(r["true"] < 0 for r in records):
                return
            dataset = ImageListDataset(samples, pipeline())
            images: list[torch.Tensor | None] = [dataset[r["index"]][0] for r in top]
            mean, std = getattr(data, "mean", None), getattr(data, "std", None)
            title = "Likely wrong labels, lowest AUM first (true: given, pred: suggested)"
            png = self.png_path

            def draw() -> None:
                grid = plot_grid(images, records, classes, mean, std, title)
                self.figure = grid
                save_image(grid, png)

            engine.artifacts.submit(draw, png, replace=True)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_sums": self.epoch_sums, "epoch_counts": self.epoch_counts,
                "prob_sums": self.prob_sums}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_sums = list(state.get("epoch_sums", []))
        self.epoch_counts = list(state.get("epoch_counts", []))
        self.prob_sums = state.get("prob_sums")
