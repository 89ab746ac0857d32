"""tools/evaluate.py for multi-label models: the engine's multi-label validation numbers
(``trainer.multilabel.MultiLabelScore``) on a split, at the model's thresholds.

The result holds ``metrics`` (``<split>/mAP``, ``micro_f1``, ``macro_f1``, ``exact_match``,
``hamming_loss``...), ``per_class`` (AP, precision, recall, F1, support, the F1-tuned threshold
and the 2x2 counts, lists by class index) and the ``thresholds`` used; ``write_label_outputs``
writes it as ``evaluation.json`` with the per-class 2x2 summary as ``confusion_matrix.png``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hooks.render.plots import plot_label_confusion, save_png
from trainer.io import atomic_write_json
from trainer.losses import BinaryCrossEntropy
from trainer.multilabel import PER_CLASS, MultiLabelScore
from trainer.restore import normalize
from trainer.state import EngineState


def evaluate_labels(
    model: Any, data: Any, split: str, loader: Iterable[Any], tta: str = "none"
) -> dict[str, Any]:
    """Score ``model`` (``tools.evaluate.LoadedModel``) on ``loader``'s multi-label batches.

    With ``tta="flip"`` the result is the score of the mean of each image's and its mirror's
    sigmoid probabilities (at the same thresholds), with the image's own figures beside it:
    ``"tta"`` and ``"without_tta"`` (``{"metrics"}``), as ``tools/evaluate.py`` reports a
    single-label model's.
    """
    plain, flip = (_scorer(model, split) for _ in range(2))
    for images, targets in loader:
        x = normalize(images, model.mean, model.std)
        logits = model.logits(x)
        plain.score(logits, (images, targets))
        if tta == "flip":  # the logits of the mean probabilities: the scorer's sigmoid undoes it
            probs = (logits.double().sigmoid() + model.logits(x.flip(-1)).double().sigmoid()) / 2
            flip.score(torch.logit(probs), (images, targets))
    plain.end()
    if tta == "none":
        return _label_result(model, data, split, plain)
    flip.end()
    without = {"metrics": _label_result(model, data, split, plain)["metrics"]}
    return {**_label_result(model, data, split, flip), "tta": tta, "without_tta": without}


def _scorer(model: Any, split: str) -> MultiLabelScore:
    state = EngineState(thresholds=getattr(model, "thresholds", None))
    return MultiLabelScore(state, split, model.classes, BinaryCrossEntropy(), torch.device("cpu"))


def _label_result(model: Any, data: Any, split: str, scorer: MultiLabelScore) -> dict[str, Any]:
    table = scorer.state.label_metrics or {}
    metrics = {k: v for k, v in scorer.metrics.items() if not k.endswith(("/loss", "/time"))}
    return {
        "model": str(model.path),
        "format": model.format,
        "weights": model.weights,
        "data": str(data.root),
        "split": split,
        "task": "multilabel",
        "n_images": sum(len(t) for t in scorer.targets),
        "num_classes": len(model.classes),
        "classes": list(model.classes),
        "thresholds": scorer.thresholds.tolist(),
        "per_class": {k: table.get(k, []) for k in PER_CLASS},
        "metrics": metrics,
    }


def print_label_report(result: dict[str, Any], console: Console | None = None) -> None:
    """Per class AP, precision, recall, F1 and support, then the overall numbers."""
    m, split = result["metrics"], result["split"]
    title = f"{Path(result['model']).name} on {split} ({result['n_images']} images): " + _figures(
        m, split
    )
    if "without_tta" in result:  # both figures: with TTA (the table's) and without
        title += f" with --tta {result['tta']}; without: " + _figures(
            result["without_tta"]["metrics"], split
        )
    table = Table(title=escape(title))
    table.add_column("class", overflow="fold")
    for name in ("AP", "precision", "recall", "F1", "support", "threshold"):
        table.add_column(name, justify="right")
    pc = result["per_class"]
    for i, name in enumerate(result["classes"]):
        table.add_row(escape(name), *(f"{pc[k][i]:.4f}" for k in ("ap", "precision", "recall",
                      "f1")), str(int(pc["support"][i])), f"{result['thresholds'][i]:.3f}")  # fmt: skip
    table.add_section()
    table.add_row("macro", f"{m.get(f'{split}/mAP', float('nan')):.4f}", "", "",
                  f"{m.get(f'{split}/macro_f1', 0.0):.4f}", "", "")  # fmt: skip
    (console or Console()).print(table)


def _figures(m: dict[str, float], split: str) -> str:
    return (
        f"mAP {m.get(f'{split}/mAP', float('nan')):.4f}, "
        f"micro F1 {m.get(f'{split}/micro_f1', 0.0):.4f}, "
        f"exact match {m.get(f'{split}/exact_match', 0.0):.4f}"
    )


def write_label_outputs(
    result: dict[str, Any], out: str | os.PathLike[str], json_name: str, png_name: str
) -> tuple[Path, Path]:
    """Write the result as ``json_name`` and the per-class 2x2 summary as ``png_name``."""
    json_path, png_path = Path(out) / json_name, Path(out) / png_name
    atomic_write_json(json_path, result)
    pc = result["per_class"]
    counts = np.array([pc[k] for k in ("tp", "fn", "fp", "tn")]).T.astype(np.int64)
    caption = f"{result['split']}, {result['n_images']} images"
    save_png(plot_label_confusion(counts, result["classes"], caption), png_path)
    return json_path, png_path
