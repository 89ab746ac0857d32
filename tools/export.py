"""Export a training checkpoint to ONNX (and fp16, INT8, OpenVINO) and verify each format
against PyTorch in its own runtime.

Usage:
    python tools/export.py runs/demo                                 # -> runs/demo/model.onnx
    python tools/export.py runs/demo --formats onnx,onnx-fp16,onnx-int8,openvino
    python tools/export.py runs/demo/checkpoints/best.pt            # -> checkpoints/best.onnx
    python tools/export.py runs/demo/checkpoints/last.pt --out last.onnx --no-ema
    python tools/export.py best.pt --data DIR --num-images 512 --calib-images 128

The architecture, classes and image size come from the checkpoint (and the run's
``labels_mapping.json`` when it sits in the run folder). The fp32 ONNX model is always written
(the other formats are converted from it) and compared with PyTorch on validation images from
``--data`` (default: the data the run was trained on); when none can be read it is compared on
random images, and the report says so (``"verified_on": "random"``); the other formats need
real validation images. ``onnx-int8`` is calibrated on a seeded sample of training images.
Each format is written beside the ONNX model (``model.fp16.onnx``, ``model.int8.onnx``,
``openvino/model.xml``); one that misses its bar is kept under a ``FAILED`` name. The report,
one entry per format under ``"formats"``, goes to ``export_report.json`` beside the model; each
entry names its measures (``"agreement"``, ``"metric"``): top-1 agreement and accuracy, or for a
multi-label model the agreement of its per-label decisions at its thresholds and val mAP (with
micro F1), for the format and for PyTorch (``trainer.export_check``).
Exit status: 0 when every format passes, 1 when one does not, 2 for a mistake in the arguments
or inputs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python tools/export.py), not imported as tools.export
    # Python put tools/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p).resolve() != _here)]

import torch

from hooks.onnx_export import REPORT_NAME
from trainer import export_formats as ef
from trainer.checkpoint import class_difference, load_checkpoint
from trainer.config_cli import program_name
from trainer.data import ImageFolderData
from trainer.data.demo import default_demo_root
from trainer.data.transforms import EvalResize
from trainer.errors import DataError, OutputError, UserError
from trainer.export import (
    MIN_OPSET,
    ExportVerificationError,
    agreement_text,
    export_with_report,
    first_images,
    random_images,
    split_entry,
)
from trainer.export_check import export_formats, sample_images
from trainer.io import atomic_write_json, free_space, is_disk_full, unwritable
from trainer.onnx_classifier import OnnxClassifier
from trainer.onnx_mapping import classes_of
from trainer.restore import labels_mapping_from_checkpoint, model_from_checkpoint
from trainer.run_files import BEST_PT, CHECKPOINTS, LAST_PT, MODEL_ONNX

log = logging.getLogger("trainer")


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A run folder stands for its ``checkpoints/best.pt`` (else ``last.pt``); files as given."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST_PT, LAST_PT):
            if (path / CHECKPOINTS / name).is_file():
                return path / CHECKPOINTS / name
    return path


def _data_root(args: Mapping[str, Any], data: str | os.PathLike[str] | None) -> Path | None:
    if data is not None:
        return Path(data)
    if args.get("data"):
        return Path(args["data"])
    if "data" in args:
        # tools/train.py records data=None for a demo run; its tree lives in the cache.
        return default_demo_root()
    return None


def run_data(
    ckpt: Mapping[str, Any],
    mapping: Mapping[str, Any],
    *,
    data: str | os.PathLike[str] | None = None,
) -> tuple[ImageFolderData | None, Path | None]:
    """The data to check (and calibrate) an export with, split as the run split it.

    Args:
        ckpt: the checkpoint (its ``args`` give the data folder, split fraction and seed).
        mapping: the labels mapping (image size).
        data: an ImageFolder tree or label file; None uses the one the run was trained on.

    Returns:
        The data and its folder; ``(None, None)``, with a warning, when the run's data is
        unknown or cannot be read.

    Raises:
        DataError: ``data`` was given explicitly and cannot be read.
    """
    args = ckpt.get("args") or {}
    root = _data_root(args, data)
    if root is None:
        log.warning("no data folder known for this checkpoint")
        return None, None
    csv = root.suffix.lower() == ".csv"
    label_sep = args.get("label_sep") if csv else None  # a CSV's, as trained; JSONL has lists
    trained_on_csv = str(args.get("data") or "").lower().endswith(".csv")
    if csv and not trained_on_csv and mapping.get("task") == "multilabel":
        problem = (f"the run trained on another kind of label file, so the separator of {root}'s "
                   "label column is unknown")  # fmt: skip
        return _unusable(root, data, problem, "Pass a JSONL label file or a tree instead.")
    try:
        tree = ImageFolderData(
            root,
            **EvalResize.from_mapping(mapping).data_kwargs(),  # crop_pct, resize_mode too
            batch_size=64,
            workers=0,
            val_fraction=float(args.get("val_fraction", 0.2)),
            seed=int(args.get("seed", 0)),
            verify=False,
            image_key=str(args.get("image_key", "path")),  # a label file's, as trained
            label_key=str(args.get("label_key", "label")),
            task=str(args.get("task") or "auto"),
            label_sep=label_sep,
        )
    except DataError:
        if data is not None:
            raise
        log.warning("the run's data at %s cannot be read", root)
        return None, None
    detail = class_difference(classes_of(mapping), tree.classes)
    if detail is not None:  # its labels would index other classes: every figure wrong
        problem = f"the model was trained on other classes than it holds ({detail})"
        return _unusable(root, data, problem, "Pass data with the model's classes.")
    return tree, root


def _unusable(root: Path, given: Any, problem: str, fix: str) -> tuple[None, None]:
    """Refuse data the user passed (``given``); for the run's own data, warn and go on without."""
    if given is not None:
        raise UserError(f"cannot check the export on {root}: {problem}. {fix}")
    log.warning("the run's data at %s is not used: %s", root, problem)
    return None, None


def verification_images(
    tree: ImageFolderData | None, mapping: Mapping[str, Any], num_images: int
) -> tuple[torch.Tensor, str]:
    """Up to ``num_images`` validation images of ``tree``, normalised as the model expects, and
    ``"val"``; random images and ``"random"`` when there are none (a warning says so)."""
    norm = mapping["normalization"]
    if tree is not None:
        images = first_images(tree.val_loader(), num_images, norm["mean"], norm["std"])
        if images is not None:
            return images, "val"
        log.warning("%s has no validation images", tree.root)
    log.warning("verifying the ONNX export on random images")
    return random_images(int(mapping["image_size"]), num_images), "random"


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    data: str | os.PathLike[str] | None = None,
    ema: bool = True,
    opset: int = 18,
    num_images: int = 256,
    model_name: str | None = None,
    img_size: int | None = None,
    formats: str | Sequence[str] = "onnx",
    calib_images: int = 256,
) -> dict[str, Any]:
    """Rebuild the model in ``checkpoint``, export it to ONNX and the other ``formats``, and
    verify each one.

    Args:
        checkpoint: a ``.pt`` file written by the trainer, or a run folder (its best.pt).
        out: the ``.onnx`` file; defaults to ``model.onnx`` in a run folder given as
            ``checkpoint``, else to the checkpoint's name with ``.onnx``. The other formats go
            beside it (``trainer.export_formats.format_path``).
        data: ImageFolder tree whose validation images the check uses; None: the run's.
        ema: export the EMA weights when the checkpoint has them.
        opset: ONNX opset version.
        num_images: validation images to compare PyTorch and each format on.
        model_name: architecture, when the checkpoint's ``args`` do not name it.
        img_size: input size, when neither the run's mapping nor ``args`` give it; also
            overrides them.
        formats: a comma list or sequence of ``trainer.export_formats.FORMATS``.
        calib_images: training images to calibrate ``onnx-int8`` on (a seeded sample).

    Returns:
        The verification report, as written to ``export_report.json`` beside ``out``: the
        fp32 ONNX check's fields, and ``"formats"``, one entry per format (its ``"passed"``
        says whether it met its bar).

    Raises:
        UserError: the checkpoint, data or formats cannot be used (the message says why).
        ExportVerificationError: the fp32 ONNX model disagrees with PyTorch; the report is
            written and no other format is.
    """
    if opset < MIN_OPSET:
        raise UserError(f"--opset must be >= {MIN_OPSET}, got {opset}; use 18.")
    if num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {num_images}.")
    if calib_images < 1:
        raise UserError(f"--calib-images must be >= 1, got {calib_images}.")
    wanted = ef.parse_formats(formats)
    if "openvino" in wanted:
        ef.import_openvino()  # before any work: the message says how to install it
    path = resolve_checkpoint(checkpoint)
    if out is not None:
        out_path = Path(out)
        if out_path.is_dir() or str(out).endswith(("/", os.sep)):  # a folder: model.onnx in it
            out_path /= MODEL_ONNX
    elif Path(checkpoint).is_dir():
        out_path = Path(checkpoint) / MODEL_ONNX
    else:
        out_path = path.with_suffix(".onnx")
    problem = unwritable(out_path.parent)  # before the export, not after it
    if problem:
        raise OutputError(
            f"cannot write {out_path.name} and its report to {out_path.parent}: {problem}. "
            "Pass --out FILE.onnx to write them elsewhere."
        )
    ckpt = load_checkpoint(path)
    model, weights = model_from_checkpoint(ckpt, path, ema=ema, model_name=model_name)
    mapping = labels_mapping_from_checkpoint(ckpt, path, img_size=img_size)
    args = ckpt.get("args") or {}
    split = split_entry(args.get("seed"), args.get("val_fraction"))
    if split is not None:
        mapping = {**mapping, "split": split}  # so tools/evaluate.py scores the run's val images
    tree, root = run_data(ckpt, mapping, data=data)
    images, verified_on = verification_images(tree, mapping, num_images)
    if verified_on == "random" and wanted != ["onnx"]:
        raise DataError(
            f"cannot check the {', '.join(wanted[1:])} export(s) of {path}: no validation "
            f"images {f'in {root}' if root else 'are known for this run'}, and a format is "
            "only kept once it is checked on real ones. Pass --data DIR (a tree with a val/ "
            "split, or a label file) to check on, or export --formats onnx alone."
        )
    name = model_name or str(args.get("model", type(model).__name__))
    report = export_with_report(
        model,
        out_path,
        labels_mapping=mapping,
        images=images,
        report_path=out_path.parent / REPORT_NAME,
        opset=opset,
        model_name=name,
        extra={
            "verified_on": verified_on,
            "data": str(root) if root is not None else None,
            "weights": weights,
            "checkpoint": str(path),
        },
    )
    if tree is None or verified_on == "random":
        entries = {"onnx": _random_entry(report)}
    else:
        entries = check_formats(
            out_path, model, wanted, tree, num_images=num_images, calib_images=calib_images,
            seed=int(args.get("seed", 0)),
        )  # fmt: skip
    report = {**report, "formats": entries}
    atomic_write_json(out_path.parent / REPORT_NAME, report)
    return report


def check_formats(
    onnx_path: Path,
    model: torch.nn.Module,
    formats: Sequence[str],
    tree: ImageFolderData,
    *,
    num_images: int,
    calib_images: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Each format converted from ``onnx_path`` and checked on a seeded sample of ``tree``'s
    validation images, preprocessed by the model's own labels mapping (``OnnxClassifier``);
    ``onnx-int8`` calibrated on a seeded sample of its training images."""
    classifier = OnnxClassifier(onnx_path)
    table = tree.label_table  # multi-label: multi-hot labels, for mAP
    images, labels = sample_images(classifier, tree.val_samples, num_images, seed=seed,
                                   label_table=table)  # fmt: skip
    calibration = None
    if "onnx-int8" in formats:
        calibration, _ = sample_images(classifier, tree.train_samples, calib_images, seed=seed)
    entries = export_formats(
        onnx_path, model, formats, images=images, labels=labels, calibration=calibration,
        mapping=classifier.mapping,
    )  # fmt: skip
    for entry in entries.values():
        entry["verified_on"] = "val"
    return entries


def _random_entry(report: Mapping[str, Any]) -> dict[str, Any]:
    """The fp32 ONNX entry of a check on random images: no labels, so no accuracies."""
    measure = "label_agreement" if "label_agreement" in report else "top1_agreement"
    metric = "mAP" if measure == "label_agreement" else "accuracy"
    keys = (measure, "max_abs_diff", "tolerance", "n_images", "passed")
    return {
        "format": "onnx",
        "path": report["path"],
        "agreement": measure,
        "metric": metric,
        **{k: report.get(k) for k in keys},
        metric: None,
        f"torch_{metric}": None,
        "verified_on": "random",
    }


def format_summary(entry: Mapping[str, Any]) -> str:
    """A format's check in words, in the measures its entry holds: ``top-1 agreement 1.0000,
    accuracy 0.9000 (PyTorch 0.9000) on 15 val images``; a multi-label model's ``label
    agreement 1.0000, val mAP 0.9500 (PyTorch 0.9500), micro F1 0.9 (PyTorch 0.9) ...``."""
    measure, metric = entry["agreement"], entry["metric"]
    agreement = "top-1 agreement" if measure == "top1_agreement" else "label agreement"
    figures = [f"{agreement} {entry[measure]:.4f}"]
    names = {"accuracy": "accuracy", "mAP": "val mAP", "micro_f1": "micro F1"}
    for key in (metric, "micro_f1") if metric == "mAP" else (metric,):
        figures.append(f"{names[key]} {entry[key]:.4f} (PyTorch {entry[f'torch_{key}']:.4f})")
    return f"{', '.join(figures)} on {entry['n_images']} val images"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name("tools/export.py"),
        description="Export a checkpoint to ONNX and verify it against PyTorch with onnxruntime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .pt checkpoint of the trainer, or a run folder")
    p.add_argument(
        "--out",
        default=None,
        help="the .onnx file (other formats go beside it), or a folder to write model.onnx in; "
        "default: RUN/model.onnx for a run folder, CHECKPOINT with .onnx for a checkpoint",
    )
    p.add_argument(
        "--formats",
        default="onnx",
        help=f"comma list of {', '.join(ef.FORMATS)}; onnx is always written",
    )
    p.add_argument(
        "--calib-images",
        type=int,
        default=256,
        help="training images (a seeded sample) to calibrate onnx-int8 on",
    )
    p.add_argument(
        "--data", default=None, help="ImageFolder tree to verify on; default: the run's data"
    )
    p.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export the EMA weights when the checkpoint has them",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version")
    p.add_argument(
        "--num-images", type=int, default=256, help="validation images to verify each format on"
    )
    p.add_argument("--model", default=None, help="architecture, for checkpoints whose args lack it")
    p.add_argument(
        "--img-size", type=int, default=None, help="input size, for checkpoints that lack it"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0: exported and verified, 1: a format failed its check, 2: bad input."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    a = build_parser().parse_args(argv)
    try:
        report = export_checkpoint(
            a.checkpoint,
            a.out,
            data=a.data,
            ema=a.ema,
            opset=a.opset,
            num_images=a.num_images,
            model_name=a.model,
            img_size=a.img_size,
            formats=a.formats,
            calib_images=a.calib_images,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportVerificationError as e:
        print(f"error: the ONNX export failed verification. {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if not is_disk_full(e):
            raise
        where = Path(e.filename).parent if e.filename else Path(a.out or a.checkpoint).parent
        print(f"error: the disk is full: writing in {where} failed ({e.strerror or e}; "
              f"{free_space(where)}). Free some space, or pass --out FILE.onnx on another disk.",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    note = " (random images: no data was readable)" if report["verified_on"] == "random" else ""
    print(
        f"exported {report['path']} ({report['weights']} weights): {agreement_text(report)} "
        f"on {report['n_images']} images{note}, "
        f"max |logit diff| {report['max_abs_diff']:.2g}; report: "
        f"{Path(report['path']).parent / REPORT_NAME}"
    )
    failed = []
    for fmt, entry in report["formats"].items():
        if fmt == "onnx":
            continue  # the line above
        summary = format_summary(entry)
        if entry["passed"]:
            print(f"exported {fmt} {entry['path']}: {summary}")
        else:
            failed.append(f"{fmt} ({'; '.join(entry['failures'])}; kept as {entry['path']})")
    if failed:
        print(
            f"error: {len(failed)} format(s) failed the check against PyTorch: "
            f"{', '.join(failed)}. Report: {Path(report['path']).parent / REPORT_NAME}. Leave "
            "them out of --formats, or see docs/deployment.md for what to try.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
