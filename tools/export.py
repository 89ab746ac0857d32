"""Export a training checkpoint to ONNX and verify it against PyTorch with onnxruntime.

Usage:
    python tools/export.py runs/demo/checkpoints/best.pt            # -> checkpoints/best.onnx
    python tools/export.py runs/demo/checkpoints/last.pt --out last.onnx --no-ema
    python tools/export.py best.pt --data DIR --num-images 256

The architecture, classes and image size come from the checkpoint (and the run's
``labels_mapping.json`` when it sits in the run folder). The export is compared with PyTorch
on validation images from ``--data`` (default: the data the run was trained on); when none can
be read it is compared on random images, and the report says so (``"verified_on": "random"``).
The report goes to ``export_report.json`` beside the model. Exit status: 0 when the export
matches, 1 when it does not, 2 for a mistake in the arguments or inputs.
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
from trainer.checkpoint import load_checkpoint
from trainer.data import ImageFolderData
from trainer.data.demo import default_demo_root
from trainer.data.transforms import EvalResize
from trainer.errors import DataError, OutputError, UserError
from trainer.export import (
    MIN_OPSET,
    ExportVerificationError,
    export_with_report,
    first_images,
    random_images,
    split_entry,
)
from trainer.io import free_space, is_disk_full, unwritable
from trainer.restore import labels_mapping_from_checkpoint, model_from_checkpoint
from trainer.run_files import BEST_PT, CHECKPOINTS, LAST_PT

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


def verification_images(
    ckpt: Mapping[str, Any],
    mapping: Mapping[str, Any],
    *,
    data: str | os.PathLike[str] | None = None,
    num_images: int = 64,
) -> tuple[torch.Tensor, str, Path | None]:
    """Validation images to compare the export on, normalised as the model expects.

    Args:
        ckpt: the checkpoint (its ``args`` give the data folder, split fraction and seed).
        mapping: the labels mapping (image size, mean/std).
        data: an ImageFolder tree; None uses the one the run was trained on.
        num_images: how many images to take.

    Returns:
        The images, ``"val"`` or ``"random"``, and the data folder used (None for random).

    Raises:
        DataError: ``data`` was given explicitly and cannot be read.
    """
    args = ckpt.get("args") or {}
    root = _data_root(args, data)
    norm = mapping["normalization"]
    size = int(mapping["image_size"])
    if root is not None:
        try:
            tree = ImageFolderData(
                root,
                **EvalResize.from_mapping(mapping).data_kwargs(),  # crop_pct, resize_mode too
                batch_size=min(num_images, 64),
                workers=0,
                val_fraction=float(args.get("val_fraction", 0.2)),
                seed=int(args.get("seed", 0)),
                verify=False,
                image_key=str(args.get("image_key", "path")),  # a label file's, as trained
                label_key=str(args.get("label_key", "label")),
            )
            images = first_images(tree.val_loader(), num_images, norm["mean"], norm["std"])
        except DataError:
            if data is not None:
                raise
            log.warning("the run's data at %s cannot be read; verifying on random images", root)
        else:
            if images is not None:
                return images, "val", root
            log.warning("%s has no validation images; verifying on random images", root)
    else:
        log.warning("no data folder known for this checkpoint; verifying on random images")
    return random_images(size, num_images), "random", None


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    data: str | os.PathLike[str] | None = None,
    ema: bool = True,
    opset: int = 18,
    num_images: int = 64,
    model_name: str | None = None,
    img_size: int | None = None,
) -> dict[str, Any]:
    """Rebuild the model in ``checkpoint``, export it to ONNX and verify it.

    Args:
        checkpoint: a ``.pt`` file written by the trainer, or a run folder (its best.pt).
        out: the ``.onnx`` file; defaults to the checkpoint's name with ``.onnx``.
        data: ImageFolder tree whose validation images the check uses; None: the run's.
        ema: export the EMA weights when the checkpoint has them.
        opset: ONNX opset version.
        num_images: images to compare PyTorch and onnxruntime on.
        model_name: architecture, when the checkpoint's ``args`` do not name it.
        img_size: input size, when neither the run's mapping nor ``args`` give it; also
            overrides them.

    Returns:
        The verification report, as written to ``export_report.json`` beside ``out``.

    Raises:
        UserError: the checkpoint or data cannot be used (the message says why).
        ExportVerificationError: onnxruntime disagrees with PyTorch; the report is written.
    """
    if opset < MIN_OPSET:
        raise UserError(f"--opset must be >= {MIN_OPSET}, got {opset}; use 18.")
    if num_images < 1:
        raise UserError(f"--num-images must be >= 1, got {num_images}.")
    path = resolve_checkpoint(checkpoint)
    out_path = Path(out) if out is not None else path.with_suffix(".onnx")
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
    images, verified_on, root = verification_images(ckpt, mapping, data=data, num_images=num_images)
    name = model_name or str(args.get("model", type(model).__name__))
    return export_with_report(
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tools/export.py",
        description="Export a checkpoint to ONNX and verify it against PyTorch with onnxruntime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="a .pt checkpoint of the trainer, or a run folder")
    p.add_argument("--out", default=None, help="the .onnx file; default: CHECKPOINT with .onnx")
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
    p.add_argument("--num-images", type=int, default=64, help="images to verify on")
    p.add_argument("--model", default=None, help="architecture, for checkpoints whose args lack it")
    p.add_argument(
        "--img-size", type=int, default=None, help="input size, for checkpoints that lack it"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0: exported and verified, 1: verification failed, 2: bad input."""
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
        f"exported {report['path']} ({report['weights']} weights): top-1 agreement "
        f"{report['top1_agreement']:.4f} on {report['n_images']} images{note}, "
        f"max |logit diff| {report['max_abs_diff']:.2g}; report: "
        f"{Path(report['path']).parent / REPORT_NAME}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
