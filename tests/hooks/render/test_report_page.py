"""render_report on its own: a hand-made RunFacts, no engine and no hooks."""

from __future__ import annotations

import html
import json
from pathlib import Path

from hooks.most_confused import HEADER as CONFUSED_HEADER
from hooks.render.report_page import MAX_NEAR_ROWS, RunFacts, render_report
from hooks.render.tables import MAX_ROWS
from hooks.top_losses import HEADER as LOSSES_HEADER
from trainer.io import atomic_write_csv


def test_render_escapes_everything_from_data(tmp_path: Path) -> None:
    facts = RunFacts(
        title="<run>",
        status="failed: ValueError: <bad> & worse",
        epochs_done=0,
        max_epochs=3,
        history=[],
        best=None,
        monitor="val/acc",
        args={"data": "/d/<x>", "note": {"a": "<y>"}},
        facts=[("model", "<script>alert(1)</script>")],
    )
    page = render_report(tmp_path, facts)
    assert "<script" not in page and "<x>" not in page and "<y>" not in page and "<bad>" not in page
    assert "&lt;script&gt;" in page
    # An empty run folder: no images, no dead links, and only the sections with content.
    assert "<img" not in page and 'id="metrics"' not in page and 'id="files"' not in page


def test_per_class_table_worst_first_and_the_reliability_diagram(tmp_path: Path) -> None:
    header = "epoch,step,class_index,class,accuracy,precision,recall,f1,support\n"
    first = "0,4,0,cat,1,1,1,1,5\n0,4,1,dog,1,1,1,1,4\n0,4,2,<b>ird,1,1,1,1,3\n"
    last = "1,8,0,cat,0.8,0.5,0.8,0.615385,5\n1,8,1,dog,1,1,1,1,4\n1,8,2,<b>ird,0,0,0,0,3\n"
    (tmp_path / "per_class.csv").write_text(header + first + last, encoding="utf-8")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "reliability.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    run = RunFacts("r", "finished", 2, 2, [], best=None, monitor="val/acc")
    page = render_report(tmp_path, run)
    section = page[page.index('id="per-class"') : page.index('id="calibration"')]
    order = [section.index(name) for name in ("&lt;b&gt;ird", "cat", "dog")]
    assert order == sorted(order)  # F1 0, then 0.615, then 1: the worst class first
    assert "<b>ird" not in page  # class names are escaped
    assert "0.6154" in section and "epoch 2 (step 8)" in section
    assert section.count("<tr>") == 1 + 3  # the header and the last validation's 3 classes
    assert 'src="plots/reliability.png"' in page
    assert 'href="per_class.csv"' in page


def test_per_class_table_shows_the_worst_classes_only_at_many_classes(tmp_path: Path) -> None:
    header = "epoch,step,class_index,class,accuracy,precision,recall,f1,support\n"
    rows = "".join(f"0,4,{i},c{i},1,1,1,{i / 1000:.4f},5\n" for i in range(1000))
    (tmp_path / "per_class.csv").write_text(header + rows, encoding="utf-8")
    page = render_report(tmp_path, RunFacts("r", "finished", 1, 1, [], best=None, monitor="x"))
    section = page[page.index('id="per-class"') :]
    section = section[: section.index("</table>")]
    assert section.count("<tr>") == 1 + MAX_ROWS  # the header and the 30 lowest F1
    assert ">c0<" in section and f">c{MAX_ROWS - 1}<" in section and f">c{MAX_ROWS}<" not in section


def test_a_class_named_script_prints_as_text_in_every_table(tmp_path: Path) -> None:
    """Autoescaping: class names and paths are user data; none of them becomes markup."""
    evil = "<script>alert(1)</script>"
    header = "epoch,step,class_index,class,accuracy,precision,recall,f1,support\n"
    (tmp_path / "per_class.csv").write_text(header + f"0,4,0,{evil},1,1,1,1,5\n", encoding="utf-8")
    stats = {
        "splits": {"train": {"counts": {evil: 1}, "total": 1, "imbalance_ratio": None}},
        "few_images": [{"class_idx": 0, "class_name": evil, "count": 1}],
    }
    (tmp_path / "dataset_stats.json").write_text(json.dumps(stats), encoding="utf-8")
    leak = {"splits": ["train", "val"], "files": [{"split": "train", "path": f"a/{evil}.png"}]}
    (tmp_path / "data_report.json").write_text(json.dumps({"leakage": [leak]}), encoding="utf-8")
    run = RunFacts(evil, "training", 0, 1, [], best=None, monitor="x", args={"data": evil})
    page = render_report(tmp_path, run)
    assert "<script" not in page
    text = html.escape(evil, quote=False)
    # title and heading, per-class row, data row, few-images note, leakage path, args.json row
    assert page.count(text) == 7


def test_most_confused_and_top_losses_sections_escape_class_names_and_paths(
    tmp_path: Path,
) -> None:
    evil = "<script>alert(1)</script>"
    pairs = [[1, 8, 2, evil, 1, "dog", 6, 0.8571], [1, 8, 0, "cat", 1, "dog", 3, 0.375]]
    atomic_write_csv(tmp_path / "most_confused.csv", CONFUSED_HEADER, pairs)
    atomic_write_csv(tmp_path / "top_losses.csv", LOSSES_HEADER,
                     [[f"val/{evil}.png", evil, "dog", 4.5, 0.97, 7, 1, 8]])  # fmt: skip
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "top_losses.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    page = render_report(tmp_path, RunFacts("r", "finished", 2, 2, [], best=None, monitor="x"))
    assert "<script" not in page
    start = page.index('id="most-confused"')
    confused = page[start : page.index("</section>", start)]
    losses = page[page.index('id="top-losses"') :]
    text = html.escape(evil, quote=False)
    assert confused.index(text) < confused.index(">cat<")  # largest first, as in the file
    assert "85.7%" in confused and confused.count("<tr>") == 1 + 2
    assert f"val/{text}.png" in losses and ">4.5<" in losses and ">0.97<" in losses
    assert 'src="plots/top_losses.png"' in losses
    assert 'href="most_confused.csv"' in page and 'href="top_losses.csv"' in page
    # A perfect validation: the section says so rather than showing an empty table.
    atomic_write_csv(tmp_path / "most_confused.csv", CONFUSED_HEADER, [])
    page = render_report(tmp_path, RunFacts("r", "finished", 2, 2, [], best=None, monitor="x"))
    assert "no validation image was mistaken for another class" in page


def test_data_section_lists_near_duplicate_pairs_escaped_and_capped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    pair = {"distance": 4, "similarity": 0.9987,
            "files": [{"split": "train", "path": f"t/{evil}.png"}, {"split": "val", "path": "v.png"}]}
    report = {"leakage": [], "near_duplicates": [pair] * (MAX_NEAR_ROWS + 3)}
    (tmp_path / "data_report.json").write_text(json.dumps(report), encoding="utf-8")
    page = render_report(tmp_path, RunFacts("r", "finished", 1, 1, [], best=None, monitor="x"))
    assert "<script" not in page
    assert f"{MAX_NEAR_ROWS + 3} pair(s) of images in two splits" in page
    assert page.count(f"train: t/{html.escape(evil, quote=False)}.png") == MAX_NEAR_ROWS
    assert "3 more pair(s) in data_report.json" in page and ">0.9987<" in page
    (tmp_path / "data_report.json").write_text(json.dumps({"leakage": [], "near_duplicates": []}))
    page = render_report(tmp_path, RunFacts("r", "finished", 1, 1, [], best=None, monitor="x"))
    assert "near-duplicate check: no picture is in two splits" in page
