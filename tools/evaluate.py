"""Evaluate a checkpoint or an exported ONNX model on an ImageFolder split.

Usage:
    python tools/evaluate.py runs/demo/checkpoints/best.pt --data DIR
    python tools/evaluate.py runs/demo/model.onnx --data DIR --split val --out eval/
    python tools/evaluate.py runs/demo/model.onnx --data DIR --tta flip
    python tools/evaluate.py runs/tags/model.onnx --data tags.csv --label-sep ';'

Reports top-1, top-5 (with 5 or more classes) and per-class precision, recall, F1 and support
as a table, writes them to ``evaluation.json`` and draws ``confusion_matrix.png`` (in --out,
default: beside the model). The numbers are counted by the engine's own evaluation code
(``trainer.metrics.EvalScore``), so a checkpoint scores here what its run's validation or test
scored; ``metrics`` holds them under the engine's names (``val/acc``, ``val/macro_f1``, ...).
ONNX models run through ``trainer.OnnxClassifier``. Images get exactly the validation
preprocessing (the model's ``crop_pct`` and resize mode, from its labels mapping). ``--tta flip``
also scores the mean of each image's and its mirror's probabilities: the report is then the
TTA one, with the figures without TTA beside it (``without_tta``); a multi-label model's TTA
averages sigmoids, then applies its thresholds. A multi-label run's CSV label file is read with
the run's ``--label-sep`` (from the checkpoint, or the args.json beside an ONNX model; or pass
``--label-sep``). The split is ``test`` when
the tree has one, else ``val``. The model's classes must be the data's. A tree of class
folders only is split as the run split it: with the seed and val_fraction recorded in the
checkpoint, in the ONNX model's labels mapping or in the run's args.json beside the model
(``--seed``/``--val-fraction`` override them); when none records them, evaluation refuses,
since another split would score training images as validation.
Exit status: 0 done, 2 for a mistake in the arguments or inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python tools/evaluate.py), not imported as tools.evaluate
    # Python put tools/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p).resolve() != _here)]

import torch
from torch.nn import functional as F

from tools.evaluate_multilabel import evaluate_labels, print_label_report, write_label_outputs
from tools.evaluate_report import PLOT_NAME, RESULT_NAME, print_report, write_outputs
from trainer.checkpoint import class_difference, load_checkpoint
from trainer.config_cli import program_name
from trainer.data import ImageFolderData
from trainer.data.scan import has_split_folders
from trainer.data.transforms import TTA_MODES, EvalResize, check_tta
from trainer.device import resolve_device
from trainer.errors import UserError
from trainer.io import free_space, is_disk_full, unwritable
from trainer.metrics import EvalScore, class_metrics
from trainer.onnx_classifier import OnnxClassifier
from trainer.onnx_mapping import classes_of
from trainer.restore import labels_mapping_from_checkpoint, model_from_checkpoint, normalize
from trainer.run_files import ARGS_JSON
from trainer.state import EngineState

log = logging.getLogger("trainer")
# How a run read its label file: the data is read alike here.
LABEL_FILE_ARGS = ("image_key", "label_key", "label_sep")



@dataclass
class LoadedModel:
    """A classifier ready to score normalised images, with what preprocessing it needs.

    Args:
        path: the file it came from.
        format: "pytorch" or "onnx".
        classes: class names by output index.
        image_size: side of the square input.
        mean: normalisation mean per channel.
        std: normalisation std per channel.
        logits: maps a normalised float (B, 3, H, W) CPU batch to (B, C) CPU logits.
        weights: "ema" or "model" for a checkpoint, None for ONNX.
        split_args: ``val_fraction`` and ``seed`` the run split an unsplit tree with (and, for
            a label file, the ``image_key`` and ``label_key`` it was read with).
        split_source: where ``split_args`` came from, for messages.
        resize: how its images are resized (its mapping's crop_pct and resize mode).
        thresholds: a multi-label model's per-class thresholds (None: single-label, or 0.5).
        multilabel: whether the model is multi-label (sigmoid outputs).
    """

    path: Path
    format: str
    classes: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    logits: Callable[[torch.Tensor], torch.Tensor]
    weights: str | None = None
    split_args: dict[str, Any] = field(default_factory=dict)
    split_source: str = ""
    resize: EvalResize | None = None
    thresholds: list[float] | None = None
    multilabel: bool = False


def load_model(
    path: str | os.PathLike[str], *, device: str = "auto", img_size: int | None = None
) -> LoadedModel:
    """Load a trainer checkpoint (``.pt``, EMA weights when present) or an exported ``.onnx``.

    Raises:
        UserError: the file is missing or is neither a checkpoint nor an ONNX model.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(
            f"{path} is a folder; pass the model file itself, e.g. {path}/checkpoints/best.pt "
            f"or {path}/model.onnx."
        )
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path)
    ckpt = load_checkpoint(path)
    model, weights = model_from_checkpoint(ckpt, path)
    mapping = labels_mapping_from_checkpoint(ckpt, path, img_size=img_size)
    dev = resolve_device(device)
    model = model.to(dev)

    @torch.inference_mode()
    def logits(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(dev)).float().cpu()

    args = ckpt.get("args") or {}
    return LoadedModel(
        path=path,
        format="pytorch",
        classes=classes_of(mapping),
        image_size=int(mapping["image_size"]),
        mean=list(mapping["normalization"]["mean"]),
        std=list(mapping["normalization"]["std"]),
        logits=logits,
        weights=weights,
        split_args={
            k: args[k] for k in ("val_fraction", "seed", "task", *LABEL_FILE_ARGS) if k in args
        },
        split_source=f"the args of {path}",
        resize=EvalResize.from_mapping(mapping),
        thresholds=(ckpt.get("state") or {}).get("thresholds"),
        multilabel=mapping.get("task") == "multilabel" or args.get("task") == "multilabel",
    )


def _load_onnx(path: Path) -> LoadedModel:
    onnx = OnnxClassifier(path)  # the one ONNX loader: checks the file, mapping and graph
    norm = onnx.mapping["normalization"]
    split_args, split_source = _onnx_split(path, onnx.mapping)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(onnx.logits(x.float().numpy()))

    return LoadedModel(
        path=path,
        format="onnx",
        classes=list(onnx.classes),
        image_size=onnx.image_size,
        mean=[float(v) for v in norm["mean"]],
        std=[float(v) for v in norm["std"]],
        logits=logits,
        split_args=split_args,
        split_source=split_source,
        resize=onnx.resize,
        thresholds=onnx.mapping.get("thresholds"),
        multilabel=onnx.multilabel,
    )


def _onnx_split(path: Path, mapping: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The run's seed and val_fraction: the labels mapping's ``split``, else the run's args.json;
    and from its args.json how it read a label file (``image_key``, ``label_key``,
    ``label_sep``).

    tools/train.py leaves ``model.onnx`` in the run folder beside ``args.json``; tools/export.py
    writes ``checkpoints/<name>.onnx``, one level below it.
    """
    args, where = _run_args(path)
    reading = {k: args[k] for k in LABEL_FILE_ARGS if args.get(k) is not None}
    if isinstance(mapping.get("split"), dict):
        return {**mapping["split"], **reading}, f"the labels mapping of {path}"
    found = {k: args[k] for k in ("val_fraction", "seed") if args.get(k) is not None}
    return {**found, **reading}, where


def _run_args(path: Path) -> tuple[dict[str, Any], str]:
    """The args.json of the run the model at ``path`` came from, and its path; ``({}, "")``."""
    for args_path in (path.parent / ARGS_JSON, path.parent.parent / ARGS_JSON):
        if not args_path.is_file():
            continue
        try:
            args = json.loads(args_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("ignoring %s (%s)", args_path, e)
            continue
        if isinstance(args, dict):
            return args, str(args_path)
    return {}, ""


def split_args_for(
    model: LoadedModel, data: Path, seed: int | None, val_fraction: float | None
) -> dict[str, Any]:
    """The seed and val_fraction to split ``data`` with, as the model's run did.

    Raises:
        UserError: ``data`` is a tree of class folders and neither the model nor the arguments
            say how the run split it.
    """
    found = dict(model.split_args)
    if seed is not None:
        found["seed"] = seed
    if val_fraction is not None:
        found["val_fraction"] = val_fraction
    if not data.is_dir() or has_split_folders(data) or not any(p.is_dir() for p in data.iterdir()):
        return found  # the folders say which image is which (or the scan says what is wrong)
    missing = [k for k in ("seed", "val_fraction") if k not in found]
    if missing:
        looked = model.split_source or (
            "its labels mapping (no 'split' entry) and no args.json beside it"
            if model.format == "onnx"
            else "its args"
        )
        raise UserError(
            f"{data} holds class folders only, so its val images are the ones the run's "
            f"seeded split held out, and the {', '.join(missing)} of that split is unknown "
            f"({model.path}: looked in {looked}). Another split would score training images "
            "as validation. Pass --seed and --val-fraction as the run used them (its "
            "args.json has them), or evaluate on a tree with train/ and val/ (or test/) folders."
        )
    log.info(
        "%s holds class folders only: evaluating the run's split (seed %s, val_fraction %s)",
        data,
        found["seed"],
        found["val_fraction"],
    )
    return found


def check_classes(model: LoadedModel, data: ImageFolderData) -> None:
    """Raise a UserError naming the difference when the model's classes are not the data's."""
    detail = class_difference(model.classes, data.classes)
    if detail is None:
        return
    raise UserError(
        f"{model.path} was trained on other classes than {data.root} holds: {detail}. "
        "Evaluate on a tree with the classes the model was trained on."
    )


def evaluate(
    model_path: str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    split: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    img_size: int | None = None,
    seed: int | None = None,
    val_fraction: float | None = None,
    tta: str = "none",
    label_sep: str | None = None,
) -> dict[str, Any]:
    """Score a model on one split of an ImageFolder tree.

    Args:
        model_path: a ``.pt`` checkpoint of the trainer or an exported ``.onnx`` model.
        data: the ImageFolder tree.
        split: "test" or "val"; None: test when the tree has one, else val.
        batch_size: images per forward pass.
        workers: data-loading processes; None: ``ImageFolderData``'s default.
        device: for checkpoints: "auto", "cpu", "cuda", ...; ONNX runs on the CPU.
        img_size: input size, for checkpoints that do not record it.
        seed: the run's split seed, for a tree of class folders; None: the one recorded.
        val_fraction: the run's val fraction, likewise.
        tta: "flip" scores the mean of each image's and its mirror's probabilities too.
        label_sep: splits a CSV label file's label column into label sets, as the run's
            ``--label-sep`` did; None: the one the run recorded (checkpoint args, or the
            args.json beside an ONNX model).

    Returns:
        ``{"model", "format", "weights", "data", "split", "n_images", "classes", "top1",
        "top5", "macro", "per_class": {"precision", "recall", "f1", "support"},
        "confusion_matrix", "metrics"}``; ``top5`` is None below 5 classes; ``metrics`` has the
        engine's ``<split>/acc``, ``acc_top5``, ``macro_f1``, ``balanced_acc`` and ``ece``.
        With ``tta="flip"`` these are TTA's, plus ``"tta"`` and ``"without_tta"``: ``{"top1",
        "top5", "metrics"}`` of the images alone.

    Raises:
        UserError: the model, the data or the split cannot be used (the message says why).
    """
    if split not in (None, "test", "val"):
        raise UserError(f"--split must be test or val, got {split!r}.")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}.")
    check_tta(tta)
    model = load_model(model_path, device=device, img_size=img_size)
    split_args = split_args_for(model, Path(data).expanduser(), seed, val_fraction)
    if Path(data).suffix.lower() != ".csv":
        split_args.pop("label_sep", None)  # the run's CSV separator: other data needs none
    if label_sep is not None:
        if not model.multilabel:  # label sets would make the data multi-label
            raise UserError(
                f"--label-sep splits a multi-label run's label sets, but {model_path} is a "
                "single-label model. Drop --label-sep."
            )
        split_args["label_sep"] = label_sep
    if model.multilabel:
        split_args["task"] = "multilabel"
        if Path(data).suffix.lower() == ".csv" and split_args.get("label_sep") is None:
            where = ("its args name none" if model.format == "pytorch"
                     else "no args.json of its run beside it names one")  # fmt: skip
            raise UserError(
                f"{model_path} is a multi-label model and {data} a CSV label file, but the "
                f"separator of the labels in its label column is unknown: no --label-sep, and "
                f"{where}. Pass --label-sep as the run was trained with it (its args.json "
                "says), e.g. --label-sep ';'."
            )
    tree = ImageFolderData(
        data,
        **(model.resize or EvalResize(model.image_size)).data_kwargs(),
        batch_size=batch_size,
        workers=workers,
        verify=False,  # every image is decoded once below anyway
        **split_args,
    )
    check_classes(model, tree)
    if split is None:
        split = "test" if tree.test_samples else "val"
        log.info("evaluating on the %s split of %s", split, tree.root)
    loader = tree.test_loader() if split == "test" else tree.val_loader()
    if loader is None or len(loader.dataset) == 0:  # type: ignore[arg-type]
        raise UserError(
            f"{tree.root} has no {split} images; add {split}/<class>/<images> or pass "
            f"--split {'val' if split == 'test' else 'test'}."
        )
    if getattr(tree, "task", "multiclass") == "multilabel":
        return evaluate_labels(model, tree, split, loader, tta)
    # The engine's scoring: the same counts, hence the same numbers, as its validation.
    scorer, flip = (
        EvalScore(EngineState(), split, model.classes, F.cross_entropy, torch.device("cpu"))
        for _ in range(2)
    )
    for images, targets in loader:
        x = normalize(images, model.mean, model.std)
        logits = model.logits(x)
        scorer.score(logits, (images, targets))
        if tta == "flip":  # log of the mean probabilities: softmax gives them back
            probs = (logits.softmax(1) + model.logits(x.flip(-1)).softmax(1)) / 2
            flip.score(probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), (images, targets))
    scorer.end()
    if tta == "none":
        return _result(model, tree, split, scorer)
    flip.end()
    plain = _result(model, tree, split, scorer)
    without = {k: plain[k] for k in ("top1", "top5", "metrics")}
    return {**_result(model, tree, split, flip), "tta": tta, "without_tta": without}


def _result(
    model: LoadedModel, tree: ImageFolderData, split: str, scorer: EvalScore
) -> dict[str, Any]:
    assert scorer.counts is not None  # end() ran
    counts = scorer.counts.confusion
    support = counts.sum(1)
    computed = class_metrics(counts)
    per_class = {k: [float(v) for v in computed[k]] for k in ("precision", "recall", "f1")}
    # Macro averages over the classes present in the split: an absent class has no recall.
    present = support > 0
    macro = {
        k: float(computed[k][present].mean()) if bool(present.any()) else 0.0
        for k in ("precision", "recall", "f1")
    }
    # The engine's names; its loss has the run's label smoothing, which this one has not.
    metrics = {k: v for k, v in scorer.metrics.items() if not k.endswith(("/loss", "/time"))}
    return {
        "model": str(model.path),
        "format": model.format,
        "weights": model.weights,
        "data": str(tree.root),
        "split": split,
        "n_images": int(support.sum()),
        "num_classes": len(model.classes),
        "classes": list(model.classes),
        "top1": metrics.get(f"{split}/acc", 0.0),
        "top5": metrics.get(f"{split}/acc_top5"),
        "macro": macro,
        "per_class": {**per_class, "support": [int(s) for s in support]},
        "confusion_matrix": counts.tolist(),
        "metrics": metrics,
    }


OUT_HINT = "Pass --out FOLDER to write evaluation.json and the plot elsewhere."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("tools/evaluate.py"),
        description="Evaluate a .pt checkpoint or an .onnx model on an ImageFolder split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="a .pt checkpoint of the trainer or an exported .onnx model")
    p.add_argument("--data", required=True, help="ImageFolder tree (train/, val/, test/)")
    p.add_argument(
        "--split", choices=("test", "val"), default=None, help="default: test if present, else val"
    )
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes")
    p.add_argument("--device", default="auto", help="for checkpoints: auto, cpu, cuda, mps")
    p.add_argument("--img-size", type=int, default=None, help="for checkpoints lacking it")
    p.add_argument("--out", default=None, help="output folder; default: beside the model")
    p.add_argument(
        "--seed", type=int, default=None, help="the run's split seed (tree of class folders)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=None, help="the run's val fraction (likewise)"
    )
    p.add_argument(
        "--label-sep", default=None,
        help="splits a CSV label file's label column into label sets (a multi-label run's "
        "--label-sep); default: the one the run recorded",
    )  # fmt: skip
    p.add_argument(
        "--tta", choices=TTA_MODES, default="none",
        help="flip: also score the mean of each image's and its mirror's probabilities",
    )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 when done, 2 for a mistake in the arguments or inputs."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a = build_parser().parse_args(argv)
    out = Path(a.out) if a.out else Path(a.model).parent
    problem = unwritable(out)  # before the evaluation, not after it
    if problem:
        print(f"error: cannot write the results to {out}: {problem}. {OUT_HINT}", file=sys.stderr)
        return 2
    try:
        result = evaluate(
            a.model,
            a.data,
            split=a.split,
            batch_size=a.batch_size,
            workers=a.workers,
            device=a.device,
            img_size=a.img_size,
            seed=a.seed,
            val_fraction=a.val_fraction,
            tta=a.tta,
            label_sep=a.label_sep,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    multilabel = result.get("task") == "multilabel"
    print_label_report(result) if multilabel else print_report(result)
    try:
        if multilabel:
            json_path, png_path = write_label_outputs(result, out, RESULT_NAME, PLOT_NAME)
        else:
            json_path, png_path = write_outputs(result, out)
    except OSError as e:
        space = f"; {free_space(out)}" if is_disk_full(e) else ""
        print(f"error: cannot write the results to {out} ({e.strerror or e}{space}). {OUT_HINT}",
              file=sys.stderr)  # fmt: skip
        return 2
    print(f"wrote {json_path} and {png_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
