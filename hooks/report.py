"""ReportHook: ``report.html``, the whole run on one self-contained page, rewritten every epoch."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hooks.render.report_page import RunFacts, render_report
from trainer.artifacts import guarded
from trainer.distributed import rank_zero_only
from trainer.hook import Hook
from trainer.io import atomic_write_text
from trainer.run_files import REPORT_HTML

if TYPE_CHECKING:
    from trainer.engine import Engine

REPORT_NAME = REPORT_HTML


class ReportHook(Hook):
    """Writes ``report.html``: summary, metrics, curves, plots and file links of the run.

    The page is redrawn on the run's artefact writer after every epoch, and once more at the
    end of the fit, when the ONNX export report exists. It only reads what other hooks wrote
    (``plots/``, the JSON files, ``checkpoints/``) and ``engine.state``, so every section
    whose hook is switched off is simply left out. Images are linked by relative path and
    the CSS is inline: the folder can be copied or zipped and the page opened from
    ``file://`` with no network. Everything taken from data (class names, paths, arguments)
    is HTML-escaped. A failure to build or write the page logs a warning and training goes
    on. The page itself is ``hooks.render.report_page.render_report``, which also works on a
    finished run folder.

    Args:
        out_dir: the run folder.
        title: the page heading; defaults to the run folder's name.

    Attributes:
        path: ``out_dir/report.html``.
        html: the latest page, as written.

    Example:
        >>> hook = ReportHook("runs/a")
        >>> Engine(model, data, hooks=[*default_hooks("runs/a"), hook]).fit()
        >>> webbrowser.open(hook.path.resolve().as_uri())
    """

    # After every writer, checkpointing (90) and the ONNX export at fit end (95).
    order = 99

    def __init__(self, out_dir: str | os.PathLike[str], title: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / REPORT_NAME
        self.title = title
        self.html: str | None = None
        self._past_seconds = 0.0  # wall time of earlier sessions of a resumed run
        self._started: float | None = None

    def on_fit_start(self, engine: Engine) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, engine: Engine) -> None:
        self._write(engine, "training")

    def on_fit_end(self, engine: Engine) -> None:
        reason = engine.state.stop_reason
        self._write(engine, f"stopped early: {reason}" if reason else "finished")

    def on_exception(self, engine: Engine, exception: BaseException) -> None:
        # The last page says why the run ended (e.g. a failed ONNX verification).
        self._write(engine, f"failed: {type(exception).__name__}: {exception}")

    @rank_zero_only
    def _write(self, engine: Engine, status: str) -> None:
        """Snapshot the engine's facts now; render and write on the artefact writer.

        The writer runs jobs in order, so this page sees the plots submitted before it; the
        engine flushes the writer when the fit ends, so the last page is written by then.
        """
        facts: RunFacts | None = None
        with guarded(self.path):
            title = self.title or self.out_dir.resolve().name
            facts = _run_facts(engine, title, status, self.seconds)
            # Copies: the engine goes on appending to and updating these while the page renders.
            facts.history = [dict(row) for row in facts.history]
            facts.best = dict(facts.best) if facts.best is not None else None
        if facts is not None:
            done = facts

            def job() -> None:
                html = render_report(self.out_dir, done)
                atomic_write_text(self.path, html)
                self.html = html

            engine.artifacts.submit(job, self.path, replace=True)  # a newer page replaces it

    @property
    def seconds(self) -> float:
        """Wall time of the fit so far, earlier sessions of a resumed run included."""
        now = 0.0 if self._started is None else time.perf_counter() - self._started
        return self._past_seconds + now

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._past_seconds = float(state.get("seconds", 0.0))


def _run_facts(engine: Engine, title: str, status: str, seconds: float) -> RunFacts:
    """What the page needs from the engine now: state, settings and a few summary rows."""
    data: Any = engine.data
    args = dict(engine.args)
    root = args.get("data", getattr(data, "root", None))
    dataset = "built-in demo dataset" if "data" in args and root is None else str(root or "?")
    counts = getattr(data, "class_counts", {}) or {}
    sizes = ", ".join(f"{split} {sum(c):,}" for split, c in counts.items() if sum(c) > 0)
    params = sum(p.numel() for p in engine.model.parameters())
    facts = [
        ("dataset", dataset),
        ("classes", f"{data.num_classes}" + (f" (images: {sizes})" if sizes else "")),
        ("model", str(args.get("model") or type(engine.model).__name__)),
        ("parameters", f"{params:,}"),
        ("precision", str(engine.precision)),
        ("device", str(engine.device)),
    ]
    return RunFacts(
        title=title,
        status=status,
        epochs_done=len(engine.state.history),
        max_epochs=engine.state.max_epochs,
        history=list(engine.state.history),
        best=engine.state.best,
        monitor=engine.monitor,
        args=args,
        facts=facts,
        seconds=seconds,
    )
