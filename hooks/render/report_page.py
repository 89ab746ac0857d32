"""``render_report(out_dir, run)``: the run folder and the engine's ``RunFacts`` as one HTML page.

Not a hook: ``ReportHook`` calls it on the artefact writer, and it works as well on a finished
run folder. This module reads the run folder into plain data, one small dict per section;
the markup is the Jinja2 template ``templates/report.html.j2``, rendered with autoescaping,
so everything taken from data (class names, paths, arguments) reaches the page as text.
Sections whose files are missing are left out.

Example:
    >>> run = RunFacts("a", "finished", 2, 2, history, best=None, monitor="val/acc")
    >>> Path("runs/a/report.html").write_text(render_report("runs/a", run), encoding="utf-8")
"""

from __future__ import annotations

import csv
import datetime
import functools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hooks.dataset_statistics import CSV_NAME
from hooks.metrics_logger import metric_columns
from hooks.render.tables import MAX_NAMED_FEW, MAX_ROWS, extreme_rows
from trainer import run_files as rf

if TYPE_CHECKING:
    import jinja2

TEMPLATE = "report.html.j2"
MAX_NEAR_ROWS = 50  # near-duplicate pairs shown in the Data section; all in data_report.json
# Files worth a link, in the order a user looks for them; missing ones are left out.
_FILES = [
    rf.MODEL_ONNX,
    rf.LABELS_MAPPING_JSON,
    rf.EXPORT_REPORT_JSON,
    rf.METRICS_CSV,
    rf.PER_CLASS_CSV,
    rf.MOST_CONFUSED_CSV,
    rf.TOP_LOSSES_CSV,
    rf.LABEL_ISSUES_CSV,
    rf.STEPS_CSV,
    rf.ARGS_JSON,
    rf.MODEL_INFO_JSON,
    rf.DATASET_STATS_JSON,
    rf.CLASS_DISTRIBUTION_CSV,
    rf.SAMPLER_DISTRIBUTION_CSV,
]
_EPOCH_FILE = re.compile(r"epoch_(\d+)(_fixed|_mistakes)?\.png")

# A section's data: a dict the template's macro of that section reads; None leaves it out.
Section = dict[str, Any] | None


@dataclass
class RunFacts:
    """What the page shows that is not in a file: the engine's view of the run.

    Attributes:
        title: page heading.
        status: "training", "finished", "stopped early: ..." or "failed: ...".
        epochs_done: epochs in the history.
        max_epochs: epochs the fit runs for.
        history: one dict per epoch, ``epoch`` from 0.
        best: the best epoch's history row, or None.
        monitor: the metric that picks the best epoch.
        args: the run's configuration.
        facts: summary rows (name, value) known only to the engine: dataset, model, device...
        seconds: wall time.
    """

    title: str
    status: str
    epochs_done: int
    max_epochs: int
    history: list[dict[str, float]]
    best: dict[str, float] | None
    monitor: str
    args: dict[str, Any] = field(default_factory=dict)
    facts: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def render_report(out_dir: str | os.PathLike[str], run: RunFacts) -> str:
    """The HTML page for the run folder ``out_dir``; links only to files present there.

    Args:
        out_dir: the run folder; every link and image path is relative to it.
        run: the engine's view of the run.
    """
    out = Path(out_dir)
    sections = [
        ("summary", "Summary", _summary(out, run)),
        ("metrics", "Metrics", _metrics(run)),
        ("curves", "Curves", _images(out, ["plots/loss.png", "plots/accuracy.png", "plots/lr.png"])),
        ("confusion", "Confusion matrix", _confusion(out)),
        ("per-class", "Per class, worst first", _per_class(out)),
        ("pr-curves", "Precision-recall curves", _images(out, ["plots/pr_curves.png"], "latest validation")),
        ("most-confused", "Most confused pairs", _most_confused(out)),
        ("calibration", "Calibration", _images(out, ["plots/reliability.png"], "latest validation")),
        ("samples", "Samples", _samples(out)),
        ("top-losses", "Top losses", _top_losses(out)),
        ("label-issues", "Likely wrong labels", _label_issues(out)),
        ("data", "Data", _data(out)),
        ("model", "Model", _rows(_read_json(out / rf.MODEL_INFO_JSON))),
        ("export", "ONNX export", _export(out)),
        ("files", "Files", _files(out)),
        ("config", "Configuration", _rows(run.args, sort=True)),
    ]
    return _template().render(
        run=run,
        stamp=datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        sections=[(key, name, data) for key, name, data in sections if data is not None],
    )


@functools.cache
def _template() -> jinja2.Template:
    import jinja2  # deferred: ~0.05 s to import, and the first page is an epoch away

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hooks.render", "templates"),
        autoescape=True,  # class names, paths and arguments are user data, never markup
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the test, not the page
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    env.filters["cell"] = _cell
    return env.get_template(TEMPLATE)


# --------------------------------------------------------------- how numbers and values print
def _num(value: Any, key: str) -> str:
    """A metric for a table cell: epochs and steps whole, the lr and extremes in 3
    significant digits, the rest with 4 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and key in ("epoch", "step"):
        return str(int(value))
    if key == "lr" or value == 0 or not 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}"
    return f"{value:.4f}"


def _cell(value: Any) -> str:
    """A value of a key-value table: JSON for containers, 6 digits for floats, commas in ints."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}x"


def _size(path: Path) -> str:
    try:
        n = float(path.stat().st_size)
    except OSError:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


# ------------------------------------------------------------------------ reading the folder
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not written (hook off) or being replaced; the section is left out


def _figure(out: Path, rel: str, caption: str = "") -> dict[str, str] | None:
    """An image of the folder, linked to itself, or None when the file is not there."""
    return {"rel": rel, "caption": caption} if (out / rel).is_file() else None


def _epoch_files(folder: Path, suffix: str = "") -> list[tuple[int, str]]:
    """(epoch, file name) of ``epoch_XXX{suffix}.png`` files in ``folder``, by epoch."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _EPOCH_FILE.fullmatch(p.name)
        if m and (m.group(2) or "") == suffix:
            found.append((int(m.group(1)), p.name))
    return sorted(found)


def _epoch_links(folder_rel: str, files: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(epoch counted from 1, path) of each epoch's file."""
    return [(epoch + 1, f"{folder_rel}/{name}") for epoch, name in files]


# ----------------------------------------------------------------------------- the sections
def _rows(doc: Any, sort: bool = False) -> Section:
    """A key-value table of a JSON object (or None when it is not one, or empty)."""
    if not isinstance(doc, Mapping) or not doc:
        return None
    items = list(doc.items())
    return {"rows": sorted(items) if sort else items}


def _summary(out: Path, run: RunFacts) -> Section:
    rows: list[tuple[str, Any]] = list(run.facts)
    info = _read_json(out / rf.MODEL_INFO_JSON)
    if isinstance(info, dict) and "size_mb" in info:
        rows.append(("size", f"{info['size_mb']:.2f} MB"))
    if run.best is not None:
        best = run.best
        metrics = ", ".join(
            f"{k} {_num(v, k)}"
            for k, v in best.items()
            if k.startswith(("val/", "test/")) and not k.endswith("time")
        )
        rows.append((f"best epoch (by {run.monitor})", f"{int(best['epoch']) + 1}: {metrics}"))
    rows.append(("wall time", _duration(run.seconds)))
    return {"rows": rows}


def _metrics(run: RunFacts) -> Section:
    if not run.history:
        return None
    header = metric_columns(run.history)  # the columns of metrics.csv, in its order
    best_epoch = None if run.best is None else run.best.get("epoch")
    rows = []
    for row in run.history:
        cells = []
        for k in header:
            v = row.get(k)
            # Epochs count from 1 on the page, like the plot titles.
            cells.append("" if v is None else str(int(v) + 1) if k == "epoch" else _num(v, k))
        rows.append({"best": best_epoch is not None and row.get("epoch") == best_epoch,
                     "cells": cells})  # fmt: skip
    return {"header": header, "rows": rows}


def _images(out: Path, rels: Sequence[str], caption: str = "") -> Section:
    figures = [f for f in (_figure(out, rel, caption) for rel in rels) if f is not None]
    return {"figures": figures} if figures else None


def _confusion(out: Path) -> Section:
    rel = "plots/confusion_matrix"
    files = _epoch_files(out / rel)
    if not files:
        return None
    epoch, name = files[-1]
    data = [f"{rel}/{Path(name).with_suffix(s).name}" for s in (".json", ".npz")]
    return {
        "figure": _figure(out, f"{rel}/{name}", f"epoch {epoch + 1}"),
        "numbers": [d for d in data if (out / d).is_file()],
        "epochs": _epoch_links(rel, files),
    }


def _per_class(out: Path) -> Section:
    """The last validation's rows of ``per_class.csv``, the lowest F1 first (at most
    ``MAX_ROWS``: the worst classes; the CSV has them all)."""
    try:
        with open(out / rf.PER_CLASS_CSV, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        last = [r for r in rows if (r["epoch"], r["step"]) == (rows[-1]["epoch"], rows[-1]["step"])]
        last.sort(key=lambda r: (float(r["f1"]), float(r["recall"]), int(r["class_index"])))
        cols = ["ap"] * ("ap" in last[0]) + ["f1", "precision", "recall", "support"]
        table = [
            {"name": r["class"], "index": r["class_index"],
             "cells": [r[c] if c == "support" else _num(float(r[c]), c) for c in cols]}
            for r in last[:MAX_ROWS]
        ]  # fmt: skip
    except (OSError, LookupError, ValueError):
        return None  # not written (--no-per-class), or being written
    return {
        "columns": cols,
        "rows": table,
        "epoch": int(last[0]["epoch"]) + 1,
        "step": last[0]["step"],
        "shown": f"the {MAX_ROWS} lowest of {len(last)} " if len(last) > MAX_ROWS else "",
    }


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, ValueError):
        return None  # not written (its hook is off), or being replaced


def _most_confused(out: Path) -> Section:
    """``most_confused.csv``: the latest validation's most confused class pairs."""
    rows = _read_csv(out / rf.MOST_CONFUSED_CSV)
    if rows is None:
        return None
    try:
        pairs = [
            {"true": r["true"], "predicted": r["predicted"], "count": int(r["count"]),
             "share": f"{float(r['share']):.1%}"}
            for r in rows[:MAX_ROWS]
        ]  # fmt: skip
    except (LookupError, ValueError):
        return None
    return {"rows": pairs, "csv": rf.MOST_CONFUSED_CSV}


def _top_losses(out: Path) -> Section:
    """``top_losses.csv`` and its grid: the latest validation's highest-loss images."""
    keys = ("path", "given", "predicted", "loss", "prob")
    return _image_table(out, rf.TOP_LOSSES_CSV, "top_losses.png", keys, "highest loss first")


def _label_issues(out: Path) -> Section:
    """``label_issues.csv`` and its grid: training images by area under the margin."""
    keys = ("path", "given", "suggested", "score")
    return _image_table(out, rf.LABEL_ISSUES_CSV, "label_issues.png", keys, "lowest score first")


def _image_table(out: Path, csv: str, png: str, keys: tuple[str, ...], caption: str) -> Section:
    """A CSV of images (its first rows, ``keys`` columns) with their grid in ``plots/``."""
    rows = _read_csv(out / csv)
    if rows is None:
        return None
    try:
        table = [[r[k] for k in keys] for r in rows[:MAX_ROWS]]
    except LookupError:
        return None
    return {
        "figure": _figure(out, f"{rf.PLOTS}/{png}", caption),
        "columns": keys,
        "rows": table,
        "csv": csv,
    }


def _samples(out: Path) -> Section:
    rel = "plots/samples"
    cells = []
    for suffix, what in (("_fixed", "fixed validation images"), ("_mistakes", "worst mistakes")):
        files = _epoch_files(out / rel, suffix)
        if files:
            epoch, name = files[-1]
            cells.append({
                "figure": _figure(out, f"{rel}/{name}", f"{what}, epoch {epoch + 1}"),
                "epochs": _epoch_links(rel, files),
            })  # fmt: skip
    return {"cells": cells} if cells else None


def _data(out: Path) -> Section:
    figures = [
        _figure(out, "plots/class_distribution.png", "images per class and split"),
        _figure(out, "plots/sampler_distribution.png", "what the sampler drew, latest epoch"),
    ]
    section = {
        "counts": _class_counts(out),
        "figures": [f for f in figures if f is not None],
        "sampler_csv": (out / rf.SAMPLER_DISTRIBUTION_CSV).is_file(),
        "leakage": _leakage(out),  # [] when the check ran and found nothing: said so
        "near": _near_duplicates(out),
    }
    shown = section["counts"] or section["figures"] or section["sampler_csv"]
    return section if shown or section["leakage"] is not None else None


def _class_counts(out: Path) -> dict[str, Any] | None:
    """The table of images per class and split from ``dataset_stats.json``, and its notes."""
    stats = _read_json(out / rf.DATASET_STATS_JSON)
    if not isinstance(stats, dict) or not stats.get("splits"):
        return None
    splits: Mapping[str, Any] = stats["splits"]
    first = next(iter(splits))
    counts = splits[first]["counts"]
    classes = list(counts)
    # Past MAX_ROWS classes: the smallest and largest, the rest in the CSV.
    shown = [classes[i] for i in extreme_rows([counts[c] for c in classes])]
    few = stats.get("few_images") or []
    names = ", ".join(f"{i['class_name']} ({i['count']})" for i in few[:MAX_NAMED_FEW])
    if len(few) > MAX_NAMED_FEW:
        names += f" and {len(few) - MAX_NAMED_FEW} more (dataset_stats.json)"
    return {
        "splits": list(splits),
        "rows": [(c, [splits[s]["counts"].get(c, 0) for s in splits]) for c in shown],
        "totals": [splits[s]["total"] for s in splits],
        "ratios": [_ratio(splits[s]["imbalance_ratio"]) for s in splits],
        "first": first,
        "more": len(classes) - len(shown),
        "full": CSV_NAME if (out / CSV_NAME).is_file() else rf.DATASET_STATS_JSON,
        "few": names,
    }


def _leakage(out: Path) -> list[dict[str, Any]] | None:
    """What --check-leakage found (``data_report.json``); None when it did not run."""
    report = _read_json(out / rf.DATA_REPORT_JSON)
    if not isinstance(report, dict) or not isinstance(report.get("leakage"), list):
        return None
    return [
        {"splits": " + ".join(leak["splits"]),
         "files": [f"{f['split']}: {f['path']}" for f in leak["files"]]}
        for leak in report["leakage"]
    ]  # fmt: skip


def _near_duplicates(out: Path) -> dict[str, Any] | None:
    """The near-duplicate pairs --check-leakage found, the closest first (at most
    ``MAX_NEAR_ROWS``; all in ``data_report.json``); None when it did not look for them."""
    report = _read_json(out / rf.DATA_REPORT_JSON)
    if not isinstance(report, dict) or not isinstance(report.get("near_duplicates"), list):
        return None
    pairs = report["near_duplicates"]
    rows = [
        {"distance": p["distance"], "similarity": p["similarity"],
         "files": [f"{f['split']}: {f['path']}" for f in p["files"]]}
        for p in pairs[:MAX_NEAR_ROWS]
    ]  # fmt: skip
    return {"rows": rows, "total": len(pairs), "more": max(0, len(pairs) - MAX_NEAR_ROWS)}


def _export(out: Path) -> Section:
    report = _read_json(out / rf.EXPORT_REPORT_JSON)
    if not isinstance(report, dict) or not report:
        return None
    return {"passed": report.get("passed"), "rows": list(report.items())}


def _files(out: Path) -> Section:
    rels = [str(p.relative_to(out).as_posix()) for p in sorted(out.glob("checkpoints/*.pt"))]
    rels += [name for name in _FILES if (out / name).is_file()]
    return {"rows": [(rel, _size(out / rel)) for rel in rels]} if rels else None

