"""ReportHook: report.html from a real run with every default hook, and in a real browser."""

from __future__ import annotations

import html
import importlib.util
import os
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import torch

from hooks import default_hooks
from hooks.report import ReportHook
from tests.conftest import StandInData, assert_survives_unwritable, png_size, run_fit
from trainer.engine import Engine
from trainer.hook import Hook

from .browser import check_page, find_chromium

# Markup, mathtext, an ampersand and non-Latin text: each must reach the page as text.
CLASSES = ["<b>cat</b>", "$x$ & co", "oiseau é Ω"]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.ids: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.links.append(str(a["href"]))
        if tag == "img":
            self.images.append(str(a.get("src")))
        if a.get("id"):
            self.ids.append(str(a["id"]))


class _PageAtEpochEnd(Hook):
    """Records the page after each epoch and at fit end, once ReportHook has rewritten it."""

    order = 100

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pages: list[str] = []

    def on_train_epoch_end(self, engine: Engine) -> None:
        engine.artifacts.flush()  # the page is rendered on the artefact writer; wait for it
        self.pages.append(self.path.read_text(encoding="utf-8"))

    def on_fit_end(self, engine: Engine) -> None:
        engine.artifacts.flush()
        self.pages.append(self.path.read_text(encoding="utf-8"))


@dataclass
class Run:
    out: Path
    hook: ReportHook
    pages: list[str]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Two epochs with every default hook and a ReportHook; shared, as the fit is the cost."""
    # A folder name that needs quoting in a URL; the page's links must not care.
    out = tmp_path_factory.mktemp("report") / "run & é #1"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = ReportHook(out)
        recorder = _PageAtEpochEnd(report.path)
        # Without default_hooks' own ReportHook (once it has one): this one is inspected.
        hooks = default_hooks(out, progress=False, log_every=2)  # steps.csv too
        others = [h for h in hooks if not isinstance(h, ReportHook)]
        hooks = [*others, report, recorder]
        run_fit(hooks, StandInData(classes=CLASSES), epochs=2)
    finally:
        torch.set_num_threads(threads)
    return Run(out, report, recorder.pages)


def test_sections_and_links_resolve_on_disk(run: Run) -> None:
    page = run.hook.path.read_text(encoding="utf-8")
    assert page == run.hook.html
    parser = _Links()
    parser.feed(page)
    for section in ("summary", "metrics", "curves", "confusion", "per-class", "calibration",
                    "samples", "top-losses", "data", "model"):  # fmt: skip
        assert section in parser.ids
    assert {"export", "files", "config"} <= set(parser.ids)
    # 3 curves, 1 confusion matrix, 1 reliability diagram, 2 sample grids, the top losses'
    # grid, 2 distributions.
    assert len(parser.images) == 10
    for ref in parser.images + parser.links:
        if ref.startswith("#"):
            assert ref[1:] in parser.ids
            continue
        parts = urlsplit(ref)
        assert not parts.scheme and not parts.netloc, f"not a relative link: {ref}"
        assert (run.out / unquote(parts.path)).is_file(), f"{ref} is not in the run folder"
    for needed in (
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "model.onnx",
        "labels_mapping.json",
        "per_class.csv",
        "steps.csv",
        "top_losses.csv",
        "most_confused.csv",
        "plots/top_losses.png",
        "plots/confusion_matrix/epoch_000.png",  # every epoch's matrix is linked
        "plots/confusion_matrix/epoch_001.png",
    ):
        assert needed in parser.links
    assert "plots/confusion_matrix/epoch_001.png" in parser.images  # the latest is shown
    assert "<script" not in page and "http" not in page  # nothing to fetch, nothing to run


def test_class_names_are_escaped(run: Run) -> None:
    page = run.hook.path.read_text(encoding="utf-8")
    assert "<b>" not in page
    for name in CLASSES:
        assert html.escape(name) in page


def test_rewritten_each_epoch_and_after_the_export(run: Run) -> None:
    after_epochs, at_end = run.pages[:-1], run.pages[-1]
    assert len(after_epochs) == 2
    assert all("training" in page and 'id="export"' not in page for page in after_epochs)
    assert "epoch\n1 of 2" in after_epochs[0]
    assert 'id="export"' in at_end and "finished" in at_end
    assert "verified: ONNX Runtime agrees with PyTorch" in at_end


def test_survives_an_unwritable_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert_survives_unwritable(ReportHook, tmp_path, caplog)


def test_wall_time_carries_over_a_resume(tmp_path: Path) -> None:
    hook = ReportHook(tmp_path)
    hook.load_state_dict({"seconds": 3600.0})
    run_fit([hook], epochs=1)
    assert hook.seconds > 3600
    assert "1:00:" in hook.path.read_text(encoding="utf-8")


def test_report_in_headless_chromium(run: Run, tmp_path: Path) -> None:
    missing = None
    if find_chromium() is None:
        missing = "Chromium on PATH: apt-get install -y chromium"
    elif importlib.util.find_spec("playwright") is None:
        missing = "Playwright, to drive it: pip install -e '.[dev]'"
    if missing is not None:
        if os.environ.get("IMGTRAINER_SKIP_BROWSER") == "1":
            pytest.skip(f"IMGTRAINER_SKIP_BROWSER=1 and no {missing}")
        pytest.fail(
            f"the report test needs {missing} "
            "(or set IMGTRAINER_SKIP_BROWSER=1 to skip this test knowingly)"
        )
    shot = tmp_path / "report.png"
    check = check_page(run.hook.path.resolve().as_uri(), screenshot=shot)
    assert len(check.images) == 10  # the reliability diagram and the top losses too
    assert check.broken_images == []
    assert check.errors == []
    assert all(url.startswith("file://") for url in check.requests), check.requests
    width, height = png_size(shot)
    assert width == 1280 and height > 1500  # the whole page, not just the first screen


def test_default_hooks_include_the_report_last(tmp_path: Path) -> None:
    hooks = default_hooks(tmp_path)
    assert isinstance(hooks[-1], ReportHook)
    assert max(h.order for h in hooks) == ReportHook.order
    assert not any(isinstance(h, ReportHook) for h in default_hooks(tmp_path, report=False))
