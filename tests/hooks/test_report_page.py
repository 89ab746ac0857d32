"""render_report on its own: a hand-made RunFacts, no engine and no hooks."""

from __future__ import annotations

from pathlib import Path

from hooks.report_page import RunFacts, render_report


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
