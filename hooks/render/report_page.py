"""``render_report(out_dir, run)``: the run folder and the engine's ``RunFacts`` as one HTML page.

Not a hook: ``ReportHook`` calls it on the artefact writer, and it works as well on a finished
run folder. Sections whose files are missing are left out; data-derived text is HTML-escaped.

Example:
    >>> run = RunFacts("a", "finished", 2, 2, history, best=None, monitor="val/acc")
    >>> Path("runs/a/report.html").write_text(render_report("runs/a", run), encoding="utf-8")
"""

from __future__ import annotations

import csv
import datetime
import html
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hooks.dataset_statistics import CSV_NAME
from hooks.metrics_logger import metric_columns
from hooks.render.tables import MAX_NAMED_FEW, MAX_ROWS, extreme_rows

# Files worth a link, in the order a user looks for them; missing ones are left out.
_FILES = [
    "model.onnx",
    "labels_mapping.json",
    "export_report.json",
    "metrics.csv",
    "per_class.csv",
    "steps.csv",
    "args.json",
    "model_info.json",
    "dataset_stats.json",
    "class_distribution.csv",
    "sampler_distribution.csv",
]
_EPOCH_FILE = re.compile(r"epoch_(\d+)(_fixed|_mistakes)?\.png")


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
    title = run.title
    sections = [
        ("summary", "Summary", _summary(out, run)),
        ("metrics", "Metrics", _metrics_table(run)),
        (
            "curves",
            "Curves",
            _images(out, ["plots/loss.png", "plots/accuracy.png", "plots/lr.png"]),
        ),
        ("confusion", "Confusion matrix", _confusion(out)),
        ("per-class", "Per class, worst first", _per_class(out)),
        ("calibration", "Calibration", _calibration(out)),
        ("samples", "Samples", _samples(out)),
        ("data", "Data", _data(out)),
        ("model", "Model", _json_table(out / "model_info.json")),
        ("export", "ONNX export", _export(out)),
        ("files", "Files", _files(out)),
        ("config", "Configuration", _config(run.args)),
    ]
    sections = [s for s in sections if s[2]]
    nav = " ".join(f'<a href="#{key}">{_e(name)}</a>' for key, name, _ in sections)
    body = "\n".join(
        f'<section id="{key}"><h2>{_e(name)}</h2>\n{content}</section>'
        for key, name, content in sections
    )
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} - training report</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{_e(title)}</h1><p class="status">{_e(run.status)} &middot; epoch
{run.epochs_done} of {run.max_epochs} &middot; written {_e(stamp)}</p>
<nav>{nav}</nav></header>
<main>
{body}
</main>
</body>
</html>
"""


_CSS = """
:root { color-scheme: light; --line: #d8dde3; --muted: #5c6670; --accent: #1f6feb; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1d2125; background: #f6f8fa; }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 12px 24px 8px;
  position: sticky; top: 0; z-index: 1; }
h1 { margin: 0; font-size: 22px; }
h2 { margin: 0 0 12px; font-size: 18px; }
h3 { margin: 16px 0 8px; font-size: 15px; }
.status { margin: 2px 0 6px; color: var(--muted); }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; white-space: nowrap; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 24px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: 16px 20px; margin: 16px 0; overflow-x: auto; scroll-margin-top: 90px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: right; }
th { background: #f0f3f6; position: sticky; top: 0; }
td.k, th.k { text-align: left; color: var(--muted); font-weight: 600; }
td.t { text-align: left; }
tr.best td { background: #e7f5e9; font-weight: 600; }
.scroll { max-height: 420px; overflow: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 12px; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; }
.links a { margin-right: 10px; }
summary { cursor: pointer; color: var(--accent); }
.ok { color: #1a7f37; font-weight: 600; }
.bad { color: #cf222e; font-weight: 600; }
.note { color: var(--muted); }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(rel: str) -> str:
    # Quoted for the URL (a run folder may hold spaces or '#'), then escaped for the attribute.
    return _e(quote(rel, safe="/"))


def _num(key: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _e(value)
    if not math.isfinite(value):
        return _e(value)
    if float(value).is_integer() and key in ("epoch", "step"):
        return str(int(value))
    if key == "lr" or value == 0 or not 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}"
    return f"{value:.4f}"


def _kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(
        f'<tr><td class="k">{_e(k)}</td><td class="t">{_cell(v)}</td></tr>' for k, v in rows
    )
    return f"<table>{body}</table>" if body else ""


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return _e(json.dumps(value, ensure_ascii=False))
    if isinstance(value, float):
        return _e(f"{value:.6g}")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return _e(value)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not written (hook off) or being replaced; the section is left out


def _summary(out: Path, run: RunFacts) -> str:
    rows = list(run.facts)
    info = _read_json(out / "model_info.json")
    if isinstance(info, dict) and "size_mb" in info:
        rows.append(("size", f"{info['size_mb']:.2f} MB"))
    if run.best is not None:
        best = run.best
        metrics = ", ".join(
            f"{k} {_num(k, v)}"
            for k, v in best.items()
            if k.startswith(("val/", "test/")) and not k.endswith("time")
        )
        rows.append((f"best epoch (by {run.monitor})", f"{int(best['epoch']) + 1}: {metrics}"))
    rows.append(("wall time", _duration(run.seconds)))
    return _kv_table(rows)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _metrics_table(run: RunFacts) -> str:
    if not run.history:
        return ""
    header = metric_columns(run.history)  # the columns of metrics.csv, in its order
    best_epoch = None if run.best is None else run.best.get("epoch")
    head = "".join(f"<th>{_e(k)}</th>" for k in header)
    rows = []
    for row in run.history:
        cls = ' class="best"' if best_epoch is not None and row.get("epoch") == best_epoch else ""
        cells = []
        for k in header:
            v = row.get(k)
            # Epochs count from 1 on the page, like the plot titles.
            shown = "" if v is None else str(int(v) + 1) if k == "epoch" else _num(k, v)
            cells.append(f"<td>{shown}</td>")
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="note">Epochs count from 1 here; file names (epoch_000...) count from 0. '
        'The best epoch is highlighted. <a href="metrics.csv">metrics.csv</a></p>'
    )


def _figure(out: Path, rel: str, caption: str = "") -> str:
    if not (out / rel).is_file():
        return ""
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><a href="{_href(rel)}"><img src="{_href(rel)}" alt="{_e(caption or rel)}">'
        f"</a>{cap}</figure>"
    )


def _images(out: Path, rels: Sequence[str]) -> str:
    figures = "".join(_figure(out, rel) for rel in rels)
    return f'<div class="grid">{figures}</div>' if figures else ""


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


def _epoch_links(folder_rel: str, files: list[tuple[int, str]]) -> str:
    links = " ".join(
        f'<a href="{_href(f"{folder_rel}/{name}")}">{epoch + 1}</a>' for epoch, name in files
    )
    return f'<p class="links">every epoch: {links}</p>'


def _confusion(out: Path) -> str:
    rel = "plots/confusion_matrix"
    files = _epoch_files(out / rel)
    if not files:
        return ""
    epoch, name = files[-1]
    parts = [_figure(out, f"{rel}/{name}", f"epoch {epoch + 1}")]
    data = [f"{rel}/{Path(name).with_suffix(s).name}" for s in (".json", ".npz")]
    links = " ".join(f'<a href="{_href(d)}">{_e(d)}</a>' for d in data if (out / d).is_file())
    if links:
        parts.append(f'<p class="links">numbers: {links}</p>')
    parts.append(_epoch_links(rel, files))
    return "".join(parts)


def _per_class(out: Path) -> str:
    """The last validation's rows of ``per_class.csv``, the lowest F1 first (at most
    ``MAX_ROWS``: the worst classes; the CSV has them all)."""
    try:
        with open(out / "per_class.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        last = [r for r in rows if (r["epoch"], r["step"]) == (rows[-1]["epoch"], rows[-1]["step"])]
        last.sort(key=lambda r: (float(r["f1"]), float(r["recall"]), int(r["class_index"])))
    except (OSError, LookupError, ValueError):
        return ""  # not written (--no-per-class), or being written
    cols = ["f1", "precision", "recall", "support"]
    head = '<th class="k">class</th><th>#</th>' + "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        f'<tr><td class="t">{_e(r["class"])}</td><td>{_e(r["class_index"])}</td>'
        + "".join(f"<td>{_e(r[c]) if c == 'support' else _num(c, float(r[c]))}</td>" for c in cols)
        + "</tr>"
        for r in last[:MAX_ROWS]
    )
    epoch = int(last[0]["epoch"]) + 1
    shown = f"the {MAX_ROWS} lowest of {len(last)} " if len(last) > MAX_ROWS else ""
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        f'</table></div><p class="note">Validation of epoch {epoch} (step {_e(last[0]["step"])}), '
        f"{shown}classes by F1, lowest first. Every class and validation: "
        '<a href="per_class.csv">per_class.csv</a></p>'
    )


def _calibration(out: Path) -> str:
    figure = _figure(out, "plots/reliability.png", "latest validation")
    if not figure:
        return ""
    return (
        f'<div class="grid">{figure}</div><p class="note">Bars below the diagonal: the model '
        "is more confident than right in that bin (overconfident); above it, underconfident. "
        "ECE, the images' mean gap, is <code>val/ece</code> in the metrics.</p>"
    )


def _samples(out: Path) -> str:
    rel = "plots/samples"
    cells = []
    for suffix, what in (("_fixed", "fixed validation images"), ("_mistakes", "worst mistakes")):
        files = _epoch_files(out / rel, suffix)
        if files:
            epoch, name = files[-1]
            cells.append(
                f"<div>{_figure(out, f'{rel}/{name}', f'{what}, epoch {epoch + 1}')}"
                f"{_epoch_links(rel, files)}</div>"
            )
    # Side by side: each grid is square-ish, so one per row would waste half the screen.
    return f'<div class="grid">{"".join(cells)}</div>' if cells else ""


def _data(out: Path) -> str:
    parts = []
    stats = _read_json(out / "dataset_stats.json")
    if isinstance(stats, dict) and stats.get("splits"):
        splits: Mapping[str, Any] = stats["splits"]
        first = next(iter(splits))
        counts = splits[first]["counts"]
        classes = list(counts)
        # Past MAX_ROWS classes: the smallest and largest, the rest in the CSV.
        shown = [classes[i] for i in extreme_rows([counts[c] for c in classes])]
        head = '<th class="k">class</th>' + "".join(f"<th>{_e(s)}</th>" for s in splits)
        body = "".join(
            f'<tr><td class="t">{_e(c)}</td>'
            + "".join(f"<td>{_e(splits[s]['counts'].get(c, 0))}</td>" for s in splits)
            + "</tr>"
            for c in shown
        )
        foot = '<tr><td class="k">total</td>' + "".join(
            f"<td>{_e(splits[s]['total'])}</td>" for s in splits
        )
        foot += '</tr><tr><td class="k">imbalance (max/min)</td>' + "".join(
            f"<td>{_ratio(splits[s]['imbalance_ratio'])}</td>" for s in splits
        )
        parts.append(
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}{foot}'
            "</tr></tbody></table></div>"
        )
        if len(shown) < len(classes):
            full = CSV_NAME if (out / CSV_NAME).is_file() else "dataset_stats.json"
            parts.append(
                f'<p class="note">The smallest and largest classes by {_e(first)} count; '
                f'{len(classes) - len(shown)} more in <a href="{full}">{full}</a></p>'
            )
        few = stats.get("few_images") or []
        if few:
            names = ", ".join(f"{i['class_name']} ({i['count']})" for i in few[:MAX_NAMED_FEW])
            if len(few) > MAX_NAMED_FEW:
                names += f" and {len(few) - MAX_NAMED_FEW} more (dataset_stats.json)"
            parts.append(f'<p class="bad">few training images: {_e(names)}</p>')
    figures = [
        _figure(out, "plots/class_distribution.png", "images per class and split"),
        _figure(out, "plots/sampler_distribution.png", "what the sampler drew, latest epoch"),
    ]
    if any(figures):
        parts.append(f'<div class="grid">{"".join(figures)}</div>')
    if (out / "sampler_distribution.csv").is_file():
        parts.append(
            '<p class="links">per epoch: <a href="sampler_distribution.csv">sampler_distribution.csv</a></p>'
        )
    parts.append(_leakage(out))
    return "".join(parts)


def _leakage(out: Path) -> str:
    """What --check-leakage found (``data_report.json``); nothing when it did not run."""
    report = _read_json(out / "data_report.json")
    if not isinstance(report, dict) or not isinstance(report.get("leakage"), list):
        return ""
    leaks = report["leakage"]
    if not leaks:
        return '<p class="ok">leakage check: no image is in more than one split</p>'
    rows = "".join(
        f'<tr><td class="t">{_e(" + ".join(leak["splits"]))}</td><td class="t">'
        + "<br>".join(_e(f"{f['split']}: {f['path']}") for f in leak["files"])
        + "</td></tr>"
        for leak in leaks
    )
    return (
        f'<p class="bad">leakage check: {len(leaks)} image(s) in more than one split '
        '(identical files; see <a href="data_report.json">data_report.json</a>)</p>'
        f'<div class="scroll"><table><thead><tr><th class="k">splits</th><th class="k">files'
        f"</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _config(args: Mapping[str, Any]) -> str:
    if not args:
        return ""
    table = _kv_table(sorted(args.items()))
    return f"<details><summary>{len(args)} settings (args.json)</summary>{table}</details>"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}x"


def _json_table(path: Path) -> str:
    doc = _read_json(path)
    return _kv_table(doc.items()) if isinstance(doc, dict) else ""


def _export(out: Path) -> str:
    report = _read_json(out / "export_report.json")
    if not isinstance(report, dict):
        return ""
    passed = report.get("passed")
    verdict = (
        '<p class="ok">verified: ONNX Runtime agrees with PyTorch</p>'
        if passed
        else '<p class="bad">verification failed: see the numbers below</p>'
        if passed is not None
        else ""
    )
    return verdict + _kv_table(report.items())


def _files(out: Path) -> str:
    rels = [str(p.relative_to(out).as_posix()) for p in sorted(out.glob("checkpoints/*.pt"))]
    rels += [name for name in _FILES if (out / name).is_file()]
    items = "".join(
        f'<tr><td class="t"><a href="{_href(rel)}">{_e(rel)}</a></td>'
        f"<td>{_size(out / rel)}</td></tr>"
        for rel in rels
    )
    return f"<table>{items}</table>" if items else ""


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
