"""Classify images with an exported ONNX model, using exactly the validation preprocessing.

Usage:
    python tools/predict.py --model runs/demo/model.onnx photos/ extra/*.jpg
    python tools/predict.py --model model.onnx photos/ --top-k 3 --output preds.csv
    python tools/predict.py --model model.onnx photos/ --output preds.jsonl
    python tools/predict.py --model model.onnx photos/ --tta flip

Only the ``.onnx`` file is needed: the labels mapping (class names, image size, crop_pct and
resize mode, mean/std) is read from its metadata, or from a ``labels_mapping.json`` beside it.
``--tta flip`` averages the probabilities of each image and its mirror. PATHs may be image files,
folders (searched recursively) or glob patterns.

Images are decoded with Pillow (``OnnxClassifier.preprocess``), which raises on a malformed file
where torchvision's native decoders can crash the process. A file that cannot be decoded is
named on stderr and skipped; the output file keeps a row for it, with its reason in ``skipped``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python tools/predict.py), not imported as tools.predict
    # Python put tools/ first on sys.path: the repository root takes its place, so
    # the tools import as the tools package and no file in tools/ shadows a package.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent), *(p for p in sys.path if Path(p).resolve() != _here)]

import numpy as np
from tqdm import tqdm

from trainer.config_cli import program_name
from trainer.data import IMG_EXTENSIONS
from trainer.data.transforms import TTA_MODES
from trainer.errors import DataError, UserError
from trainer.export import OnnxClassifier
from trainer.io import atomic_write_csv, atomic_write_json, atomic_write_text

# Above this many rows the table floods the terminal; the output file is the place for them.
TABLE_MAX_ROWS = 20
_GLOB_CHARS = frozenset("*?[")
OUTPUT_FORMATS = frozenset({".csv", ".json", ".jsonl"})


def _images_in(folder: Path, seen: set[Path]) -> Iterator[Path]:
    """Images under ``folder``, following symlinked folders but entering each real one once.

    ``seen`` holds the resolved folders already walked, so a link loop ends and a folder
    reached twice (by two links, or by two PATH arguments) is listed once.
    """
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = Path(dirpath).resolve()
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # Hidden entries are editor/OS debris (.DS_Store, ._x.jpg, .ipynb_checkpoints).
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMG_EXTENSIONS:
                yield Path(dirpath) / name


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files, folders (recursively) and glob patterns into a de-duplicated image list.

    A file named explicitly is kept whatever its extension; folders and globs contribute only
    files with an image extension.

    Raises:
        UserError: Nothing at the given paths is an image.
    """
    found: list[Path] = []
    missing: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        text = os.fspath(raw)
        p = Path(text)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found.extend(_images_in(p, seen))
        elif _GLOB_CHARS & set(text):
            for match in sorted(glob.glob(text, recursive=True)):
                m = Path(match)
                if m.is_dir():
                    found.extend(_images_in(m, seen))
                elif m.suffix.lower() in IMG_EXTENSIONS:
                    found.append(m)
        else:
            missing.append(text)
    images = list(dict.fromkeys(found))  # keeps first-seen order
    if not images:
        shown = ", ".join(os.fspath(p) for p in paths) or "(none given)"
        raise UserError(
            f"No images found at: {shown}. Pass image files, folders (searched recursively) or "
            f"glob patterns such as 'photos/*.jpg'; recognised extensions are "
            f"{', '.join(sorted(IMG_EXTENSIONS))}."
        )
    for text in missing:
        print(f"Warning: {text} does not exist; skipped.", file=sys.stderr)
    return images


def _print_skip(path: Path, reason: str) -> None:
    tqdm.write(f"Skipped {path}: {reason}", file=sys.stderr)


def predict_paths(
    model_path: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    batch_size: int = 32,
    *,
    on_skip: Callable[[Path, str], None] = _print_skip,
    progress: bool | None = None,
    tta: str = "none",
    all_probs: bool = False,
) -> list[dict[str, Any]]:
    """Classify every image found at ``paths`` with the ONNX model at ``model_path``.

    ``trainer.OnnxClassifier`` does the work: each image goes through ``load_image`` and
    ``eval_preprocess`` (the validation transform), then is scaled to [0, 1] and normalised
    with the model's mean/std.

    Args:
        model_path: An ``.onnx`` file exported by ``trainer.export.export_onnx``.
        paths: Image files, folders (recursive) or glob patterns.
        top_k: How many classes to list per image (capped at the number of classes).
        batch_size: Images per onnxruntime call.
        on_skip: Called with the path and reason for each file that cannot be decoded.
        progress: Show a tqdm bar; None shows it only on a terminal.
        tta: "flip" averages the probabilities of each image and its mirror.
        all_probs: Add ``"probs"``: every class's probability, by class name.

    Returns:
        One dict per image, in input order: ``{"path", "label", "prob", "topk": [{"label",
        "prob"}, ...]}``; for a file that cannot be decoded ``{"path", "label": None, "prob":
        None, "topk": [], "skipped": reason}``. A multi-label model's rows add ``"labels"``, the
        labels at or above their thresholds, most likely first (``label`` and ``prob`` are the
        first of them, None when there is none).

    Raises:
        UserError: The model is missing or unusable, or no images were found.
    """
    if top_k < 1 or batch_size < 1:
        raise UserError(f"--top-k and --batch-size must be >= 1, got {top_k} and {batch_size}.")
    classifier = OnnxClassifier(model_path, tta=tta)
    images = collect_images(paths)
    results: list[dict[str, Any]] = []
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(images), unit="img", desc="predict", disable=not show) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            kept: list[int] = []
            inputs: list[np.ndarray] = []
            for path in chunk:
                try:
                    inputs.append(classifier.preprocess(path))
                except DataError as exc:  # the decoder's error, as Pillow raised it
                    cause = exc.__cause__ or exc
                    reason = f"cannot decode ({type(cause).__name__}: {cause})"
                    on_skip(path, reason)
                    results.append(_skipped_row(path, reason))
                    continue
                kept.append(len(results))
                results.append({"path": str(path)})
            bar.update(len(chunk))
            if not inputs:
                continue
            probs = classifier.probabilities(np.stack(inputs))
            for at, top, row in zip(kept, classifier.top_k(probs, top_k), probs, strict=True):
                topk = [{"label": label, "prob": prob} for label, prob in top]
                results[at].update({**(topk[0] if topk else {"label": None, "prob": None}),
                                    "topk": topk})  # fmt: skip
                if classifier.multilabel:  # the whole predicted set, whatever top_k
                    every = classifier.top_k(row[None], len(classifier.classes))[0]
                    results[at]["labels"] = [label for label, _ in every]
                if all_probs:
                    results[at]["probs"] = dict(zip(classifier.classes, map(float, row), strict=True))
    return results


def _skipped_row(path: Path, reason: str) -> dict[str, Any]:
    return {"path": str(path), "label": None, "prob": None, "topk": [], "skipped": reason}


def write_predictions(rows: Sequence[dict[str, Any]], output: Path) -> None:
    """Write rows as JSON (a list), JSON Lines (one object per image, the same objects), or CSV
    ``path,label,prob,topk,skipped`` (``topk`` like ``cat:0.91;dog:0.05``; ``skipped`` empty,
    or why the file could not be decoded), then ``labels`` (multi-label: the predicted set,
    ``;``-joined) and one ``prob_<class>`` column per class (``--all-probs``) when rows have
    them."""
    if output.suffix.lower() == ".json":
        atomic_write_json(output, list(rows))
        return
    if output.suffix.lower() == ".jsonl":
        atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return
    multilabel = any("labels" in r for r in rows)
    classes = next((list(r["probs"]) for r in rows if "probs" in r), [])
    atomic_write_csv(
        output,
        ["path", "label", "prob", "topk", "skipped"]
        + ["labels"] * multilabel
        + [f"prob_{c}" for c in classes],
        (
            [
                r["path"],
                r["label"] or "",
                "" if r["prob"] is None else f"{r['prob']:.6f}",
                ";".join(f"{t['label']}:{t['prob']:.4f}" for t in r["topk"]),
                r.get("skipped", ""),
            ]
            + [";".join(r.get("labels", []))] * multilabel
            + [f"{r['probs'][c]:.6f}" if "probs" in r else "" for c in classes]
            for r in rows
        ),
    )


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """Print predictions as a rich table on stdout (skipped files are left out)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rows = [r for r in rows if "skipped" not in r]
    table = Table(title=f"{len(rows)} predictions")
    table.add_column("path", overflow="fold")
    table.add_column("label")
    table.add_column("prob", justify="right")
    table.add_column("runners-up")
    for r in rows:
        others = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["topk"][1:])
        label = ";".join(r["labels"]) if "labels" in r else r["label"]  # multi-label: the set
        prob = "" if r["prob"] is None else f"{r['prob']:.3f}"
        # Paths and class names are data, not rich markup: "[red]" and "[/]" print as is.
        table.add_row(escape(r["path"]), escape(label or "-"), prob, escape(others))
    Console().print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=program_name("tools/predict.py"),
        description="Classify images with an exported ONNX model (validation preprocessing).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or globs")
    parser.add_argument(
        "--model", required=True, type=Path,
        help="the exported .onnx file, or a run folder (its model.onnx)",
    )  # fmt: skip
    parser.add_argument("--top-k", type=int, default=5, help="classes listed per image")
    parser.add_argument("--batch-size", type=int, default=32, help="images per onnxruntime call")
    parser.add_argument(
        "--tta", choices=TTA_MODES, default="none",
        help="flip: average the probabilities of each image and its horizontal mirror",
    )  # fmt: skip
    parser.add_argument(
        "--all-probs", action="store_true", help="also write every class's probability"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write predictions to a .csv, .json or .jsonl (one JSON object per image) file",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for a mistake in the arguments or inputs)."""
    args = build_parser().parse_args(argv)
    try:
        if args.output is not None and args.output.suffix.lower() not in OUTPUT_FORMATS:
            raise UserError(
                f"--output {args.output} has an unknown format; use a .csv, .json or .jsonl "
                "file name."
            )
        rows = predict_paths(args.model, args.paths, args.top_k, args.batch_size, tta=args.tta,
                             all_probs=args.all_probs)  # fmt: skip
        skipped = sum("skipped" in r for r in rows)
        if skipped == len(rows):
            raise UserError(
                "None of the images could be decoded (see the messages above); check the files "
                "are images and not truncated."
            )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    if args.output is not None:
        # The file first: a table that fails to print (a closed pipe) must not lose the results.
        try:
            write_predictions(rows, args.output)
        except OSError as exc:
            print(
                f"error: cannot write {args.output} ({exc.strerror or exc}); pass an --output "
                "path in a writable folder.",
                file=sys.stderr,
            )
            return 2
        note = f" and {skipped} skipped file(s)" if skipped else ""
        print(f"Wrote {len(rows) - skipped} predictions{note} to {args.output}", file=sys.stderr)
    if args.output is None or len(rows) - skipped <= TABLE_MAX_ROWS:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
