"""tools/evaluate.py's report of a single-label evaluation: the per-class table on the console,
and ``evaluation.json`` with ``confusion_matrix.png``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hooks.render.plots import plot_confusion_matrix, save_png
from hooks.render.tables import MAX_ROWS, extreme_rows, more_caption
from trainer.io import atomic_write_json

RESULT_NAME = "evaluation.json"
PLOT_NAME = "confusion_matrix.png"


def print_report(result: dict[str, Any], console: Console | None = None) -> None:
    """The per-class table and the overall numbers, on stdout (or ``console``).

    Past 30 classes the table shows the 15 lowest and 15 highest F1 (all in evaluation.json).
    """
    title = (
        f"{Path(result['model']).name} on {result['split']} ({result['n_images']} images): "
        f"top-1 {result['top1']:.4f}"
        + (f", top-5 {result['top5']:.4f}" if result["top5"] is not None else "")
    )
    if "without_tta" in result:  # both figures: with TTA (the table's) and without
        plain = result["without_tta"]
        title += f" with --tta {result['tta']}; without: top-1 {plain['top1']:.4f}" + (
            f", top-5 {plain['top5']:.4f}" if plain["top5"] is not None else "")  # fmt: skip
    # Class names and file names are data, not rich markup: "[red]" and "[/]" print as is.
    table = Table(title=escape(title))
    table.add_column("class", overflow="fold")
    for name in ("precision", "recall", "F1", "support"):
        table.add_column(name, justify="right")
    pc = result["per_class"]
    classes = result["classes"]
    # Past MAX_ROWS classes: the lowest and the highest F1; every class is in evaluation.json.
    shown = extreme_rows(pc["f1"])
    more = more_caption(len(classes), len(shown), RESULT_NAME)
    if more:
        table.caption = f"the classes with the lowest and the highest F1; {more}"
    for k, i in enumerate(shown):
        if more and k == MAX_ROWS // 2:
            table.add_section()
        table.add_row(
            escape(classes[i]),
            f"{pc['precision'][i]:.4f}",
            f"{pc['recall'][i]:.4f}",
            f"{pc['f1'][i]:.4f}",
            str(pc["support"][i]),
        )
    m = result["macro"]
    table.add_section()
    table.add_row(
        "macro avg",
        f"{m['precision']:.4f}",
        f"{m['recall']:.4f}",
        f"{m['f1']:.4f}",
        str(result["n_images"]),
    )
    (console or Console()).print(table)


def write_outputs(result: dict[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``evaluation.json`` and ``confusion_matrix.png`` to ``out_dir``; return both."""
    out = Path(out_dir)
    json_path, png_path = out / RESULT_NAME, out / PLOT_NAME
    atomic_write_json(json_path, result)
    counts = np.asarray(result["confusion_matrix"], dtype=np.int64)
    # The hook's titles name an epoch; here the split and its size say what was counted.
    caption = f"{result['split']}, {result['n_images']} images"
    save_png(plot_confusion_matrix(counts, result["classes"], caption), png_path)
    return json_path, png_path
