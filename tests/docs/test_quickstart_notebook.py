"""docs/quickstart.ipynb runs from top to bottom in a real Jupyter kernel (nbclient and
ipykernel, the ``dev`` extra), and what it shows is readable: figures inline, tables as
text, one clean line per epoch instead of a wall of progress-bar redraws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "docs" / "quickstart.ipynb"


def _text(output: dict[str, Any]) -> str:
    if output["output_type"] == "stream":
        return str(output["text"])
    return str(output.get("data", {}).get("text/plain", ""))


def test_quickstart_notebook_runs_and_reads_well(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The notebook's folder is the kernel's working directory: the run goes to tmp_path/runs.
    client = NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first cell that fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    # The three figures are inline images, each in its own cell.
    figures = [c for c in code if "figure" in c.source]
    assert len(figures) == 3
    for cell in figures:
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source

    streams = "".join(str(o["text"]) for o in outputs if o["output_type"] == "stream")
    # No progress bar redrawn with carriage returns, and a bounded number of lines.
    assert "\r" not in streams
    lines = streams.splitlines()
    assert len(lines) <= 30, streams
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/3", "2/3", "3/3"]
    # The rich tables come out as text a reader can scan.
    shown = "\n".join(_text(o) for o in outputs)
    assert "Class distribution" in shown and "circle" in shown
    assert "test/acc" in shown
    # The last cell classified one image per class with model.onnx through OnnxClassifier,
    # then one PIL image: its top-2 (label, probability) pairs are the cell's value.
    last = "".join(_text(o) for o in code[-1].outputs)
    predictions = [line for line in last.splitlines() if " -> " in line]
    assert len(predictions) == 6, last
    assert last.rstrip().endswith(")]") and last.count("', 0.") + last.count("', 1.") >= 2
    assert (tmp_path / "runs" / "quickstart" / "model.onnx").is_file()
