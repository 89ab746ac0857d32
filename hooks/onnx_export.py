"""OnnxExportHook: at the end of a fit, export the best weights to ONNX and verify them
(``trainer.export``, which ``tools/export.py`` uses as well)."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from trainer import export
from trainer.checkpoint import load_checkpoint
from trainer.distributed import is_global_zero
from trainer.export import first_images, random_images
from trainer.hook import Hook
from trainer.restore import checkpoint_weights
from trainer.run_files import (
    BEST_PT,
    CHECKPOINTS,
    EXPORT_REPORT_JSON,
    LABELS_MAPPING_JSON,
    MODEL_ONNX,
)
from trainer.run_folder import write_labels_mapping

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger("trainer.hooks")

REPORT_NAME = EXPORT_REPORT_JSON


class OnnxExportHook(Hook):
    """Exports the best weights to ``model.onnx`` and checks it with onnxruntime.

    At the end of a fit that finished (not on an error), the weights of
    ``checkpoints/best.pt`` (its EMA weights when it has them) are exported; without a best.pt,
    ``engine.eval_model`` is. The ONNX model is then compared with PyTorch on up to
    ``num_verify_images`` validation images, preprocessed as validation does, and the report
    (``top1_agreement``, ``max_abs_diff``, ``n_images``, ...) goes to ``export_report.json``.
    ``labels_mapping.json`` is written beside the model when missing.

    A model that fails the check raises ``ExportVerificationError`` out of ``fit``: a silently
    wrong ``model.onnx`` would be worse than none. The checkpoints are on disk by then and kept.

    Args:
        out_dir: the run folder.
        opset: ONNX opset version.
        num_verify_images: validation images to compare PyTorch and onnxruntime on.
        order: position among the hooks; after checkpointing (90) so best.pt is final.

    Attributes:
        path: the exported ``model.onnx`` once written, else None.
        report: the verification report (also when it failed), else None.

    Example:
        >>> hook = OnnxExportHook("runs/a")
        >>> Engine(model, data, hooks=[CheckpointHook("runs/a"), hook]).fit()
        >>> hook.report["top1_agreement"]
    """

    order = 95

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        opset: int = 18,
        num_verify_images: int = 64,
        order: int = 95,
    ) -> None:
        if num_verify_images < 1:
            raise ValueError(f"num_verify_images must be >= 1, got {num_verify_images}")
        self.out_dir = Path(out_dir)
        self.opset = opset
        self.num_verify_images = num_verify_images
        self.order = order
        self.path: Path | None = None
        self.report: dict[str, Any] | None = None

    def on_fit_end(self, engine: Engine) -> None:
        if not is_global_zero():
            return  # under DDP every rank holds the same weights; one file is enough
        data: Any = engine.data  # labels_mapping, mean and std are beyond the engine's protocol
        model, weights, checkpoint = self._best_model(engine)
        images = first_images(data.val_loader(), self.num_verify_images, data.mean, data.std)
        verified_on = "val"
        if images is None:
            log.warning("no validation images to verify the ONNX export on; using random ones")
            size = int(data.labels_mapping()["image_size"])
            images, verified_on = random_images(size, self.num_verify_images), "random"
        if not (self.out_dir / LABELS_MAPPING_JSON).is_file():  # used without default_hooks
            write_labels_mapping(self.out_dir, data)
        self.path = self.out_dir / MODEL_ONNX
        report_path = self.out_dir / REPORT_NAME
        mapping = data.labels_mapping()
        args = engine.args
        split = export.split_entry(
            getattr(data, "seed", args.get("seed")),
            getattr(data, "val_fraction", args.get("val_fraction")),
        )
        if engine.state.thresholds is not None:  # multi-label: the best epoch's, as best.pt's
            mapping["thresholds"] = list(engine.state.thresholds)
        if split is not None:
            mapping["split"] = split  # so tools/evaluate.py scores the run's own val images
        try:
            self.report = export.export_with_report(
                model,
                self.path,
                labels_mapping=mapping,
                images=images,
                report_path=report_path,
                opset=self.opset,
                model_name=str(engine.args.get("model", type(engine.model).__name__)),
                extra={"verified_on": verified_on, "weights": weights, "checkpoint": checkpoint},
            )
        except export.ExportVerificationError:
            # Notebook users inspect the failed comparison here; the error carries the summary.
            self.report = json.loads(report_path.read_text(encoding="utf-8"))
            raise
        log.info(
            "exported %s: %s on %d %s images, max |logit diff| %.2g",
            self.path,
            export.agreement_text(self.report),
            self.report["n_images"],
            verified_on,
            self.report["max_abs_diff"],
        )

    def _best_model(self, engine: Engine) -> tuple[nn.Module, str, str | None]:
        """best.pt's weights in a copy of the engine's model, else ``engine.eval_model``.

        Returns the model, which weights it holds ("ema" or "model") and the checkpoint file.
        """
        final = engine.eval_model, "ema" if engine.ema is not None else "model", None
        best = self.out_dir / CHECKPOINTS / BEST_PT
        if not best.is_file():
            return final
        ckpt = load_checkpoint(best)
        if list(ckpt.get("classes", [])) != list(engine.data.classes):
            # A best.pt left by an earlier run on other data: exporting it would be wrong.
            log.warning("%s was trained on other classes; exporting the final weights", best)
            return final
        state, weights = checkpoint_weights(ckpt)
        model = copy.deepcopy(engine.model)
        model.load_state_dict(state)
        return model.eval(), weights, str(best)
