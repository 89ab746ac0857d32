"""TopLossesHook: the validation images with the highest loss, as ``top_losses.csv`` and a grid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from hooks.render.plots import plot_grid, save_image
from hooks.sample_visualization import read_val_images, val_batch_indices
from trainer.artifacts import guarded
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_csv
from trainer.metrics import keep_top
from trainer.run_files import PLOTS, TOP_LOSSES_CSV
from trainer.task import is_multilabel

if TYPE_CHECKING:
    from PIL import Image

    from trainer.engine import Engine

HEADER = ["path", "given", "predicted", "loss", "prob", "index", "epoch", "step"]
PNG_NAME = "top_losses.png"


class TopLossesHook(Hook):
    """Lists the validation images the model gets most wrong, like fastai's ``plot_top_losses``.

    After each validation it writes ``top_losses.csv``, the ``num_images`` images with the
    highest cross-entropy loss, highest first: ``path`` (as the data source lists it),
    ``given`` (the label in the data), ``predicted``, ``loss``, ``prob`` (the predicted
    class's probability; the given label's is ``exp(-loss)``), ``index`` (in the validation
    set), ``epoch`` (from 0, as in ``metrics.csv``) and ``step``; and ``plots/top_losses.png``,
    the same images in a grid captioned with both labels, the probability and the loss. Both
    hold the latest validation. The sanity check is left out. A high loss on a confident
    prediction is often a wrong label rather than a hard image.

    No second forward pass and no per-batch host read: each validation batch's per-image loss
    is computed on the device from the logits the engine hands the hooks, and merged into a
    running top-k there; the host reads the k rows once, at the end of the validation. An
    image's index is the one the validation loader names (``val_batch_indices``, shared with
    ``SampleVisualizationHook``, as are the image re-reading and the grid); paths come from
    ``data.val_samples``.

    Under DDP rank ``r`` validates images ``r, r + world_size, ...``: rank 0 ranks and writes
    the top losses of its own shard only.

    Args:
        out_dir: the run folder.
        num_images: images listed and drawn.

    Attributes:
        losses: the latest validation's top losses, highest first: dicts of ``index``,
            ``path``, ``given``, ``predicted`` (class names), ``given_index``,
            ``predicted_index``, ``loss`` and ``prob``.
        figure: the latest grid, a PIL image (a notebook shows it as it is).

    Example:
        >>> hook = TopLossesHook("runs/a", num_images=9)
        >>> Engine(model, data, hooks=[hook]).fit()
        >>> [(t["path"], t["given"], t["predicted"]) for t in hook.losses[:3]]
    """

    order = 50

    def __init__(self, out_dir: str | os.PathLike[str], num_images: int = 16) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.csv_path = Path(out_dir) / TOP_LOSSES_CSV
        self.png_path = Path(out_dir) / PLOTS / PNG_NAME
        self.num_images = num_images
        self.losses: list[dict[str, Any]] = []
        self.figure: Image.Image | None = None
        self._seen = 0
        self._top: tuple[torch.Tensor, ...] | None = None  # loss, index, pred, prob, given

    def on_validation_epoch_start(self, engine: Engine) -> None:
        self._seen, self._top = 0, None

    @rank_zero_only  # rank 0 lists its shard; the other ranks need not collect
    def on_validation_batch_end(
        self, engine: Engine, outputs: dict[str, torch.Tensor], batch: Any, batch_idx: int
    ) -> None:
        if engine.state.phase != "val" or is_multilabel(engine.data):  # one label per image
            return
        logits, given = outputs["logits"].float(), outputs["targets"]
        if given.ndim > 1:  # soft targets: the label is the most probable class
            given = given.argmax(1)
        index = val_batch_indices(engine, self._seen, len(given))  # a shape, not a device read
        self._seen += len(given)
        if index is None:
            return
        index = index.to(logits.device, non_blocking=True)
        loss = F.cross_entropy(logits, given, reduction="none")
        prob, pred = logits.softmax(1).max(1)
        new: tuple[torch.Tensor, ...] = (loss, index, pred, prob, given)
        self._top = keep_top(self._top, new, self.num_images)

    @rank_zero_only
    def on_validation_epoch_end(self, engine: Engine) -> None:
        if self._top is None:  # nothing collected: a sanity check, or no validation image
            return
        # One host read: the k rows as float64 (exact for any index below 2**53).
        rows = torch.stack([t.double() for t in self._top]).T.tolist()
        self._top = None
        data: Any = engine.data
        classes: list[str] = list(data.classes)
        samples = getattr(data, "val_samples", None)
        self.losses = []
        for loss, g, p, prob, t in rows:
            index, pred, given = int(g), int(p), int(t)
            path = str(samples[index][0]) if samples is not None else ""
            self.losses.append({
                "index": index, "path": path, "given": classes[given],
                "predicted": classes[pred], "given_index": given, "predicted_index": pred,
                "loss": round(loss, 4), "prob": round(prob, 4),
            })  # fmt: skip
        s = engine.state
        table = [[*(r[k] for k in HEADER[:6]), s.epoch, s.step] for r in self.losses]
        csv_path = self.csv_path
        engine.artifacts.submit(
            lambda: atomic_write_csv(csv_path, HEADER, table), csv_path, replace=True
        )
        records = [
            {"index": r["index"], "true": r["given_index"], "pred": r["predicted_index"],
             "prob": r["prob"], "loss": r["loss"], "correct": r["given"] == r["predicted"]}
            for r in self.losses
        ]  # fmt: skip
        with guarded(self.png_path):  # the dataset is read here, not on the writer thread
            images = read_val_images(data, [r["index"] for r in self.losses])
            mean, std = getattr(data, "mean", None), getattr(data, "std", None)
            title = f"Highest validation losses, epoch {s.epoch + 1}"
            png = self.png_path

            def draw() -> None:
                grid = plot_grid(images, records, classes, mean, std, title)
                self.figure = grid
                save_image(grid, png)

            engine.artifacts.submit(draw, png, replace=True)
