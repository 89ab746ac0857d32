"""The README's Python examples run as written, on a tiny tree instead of the user's photos.

Only what cannot run here is swapped: the data folder, the image size, pretrained weights (a
download), the number of epochs and the run folder; the pandas line is left out when pandas is
not installed.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_tree

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(after_heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(after_heading) :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, f"no python block under {after_heading!r}"
    return match.group(1)


def _notebook_example(tmp_path: Path) -> str:
    tree = make_tree(tmp_path / "flowers")
    code = _python_block("## In a notebook")
    swaps = {
        '"flowers/"': repr(str(tree)),
        "img_size=128": "img_size=16",
        "pretrained=True": "pretrained=False",
        "max_epochs=10": "max_epochs=1",
        '"runs/flowers"': repr(str(tmp_path / "run")),
    }
    for old, new in swaps.items():
        assert old in code, old  # the README still says what this test swaps
        code = code.replace(old, new)
    if importlib.util.find_spec("pandas") is None:
        code = "\n".join(line for line in code.splitlines() if "pandas" not in line)
    return code


def _predict_example(tmp_path: Path) -> str:
    code = _python_block("### Predicting from Python")
    val = tmp_path / "flowers" / "val"
    swaps = {
        '"photos/"': repr(str(val)),
        '"a.jpg"': repr(str(val / "cat" / "1.jpg")),
        '"b.png"': repr(str(val / "dog" / "0.png")),
        '"runs/flowers/model.onnx"': repr(str(tmp_path / "run" / "model.onnx")),
    }
    for old, new in swaps.items():
        assert old in code, old
        code = code.replace(old, new)
    return code


def test_notebook_and_predict_examples_run_as_a_script_that_exits(tmp_path: Path) -> None:
    """The two examples, one after the other, as `python example.py` rather than exec: the
    process must also end by itself, with the default loader workers (issue 24: Python's
    multiprocessing exit handler used to wait on them forever)."""
    checks = f"""
print("epochs:", len(history))
print("probs:", tuple(probs.shape))  # the validation loader's 15 images
top = clf.predict({str(tmp_path / "flowers" / "val" / "cat" / "1.jpg")!r}, top_k=3)
print("top:", sorted(label for label, _ in top))
"""
    script = tmp_path / "example.py"
    script.write_text(_notebook_example(tmp_path) + _predict_example(tmp_path) + checks)
    # Bounded: a hang at exit fails the test (TimeoutExpired) instead of stalling the suite.
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epochs: 1" in proc.stdout and "probs: (15, 3)" in proc.stdout
    assert "top: ['bird', 'cat', 'dog']" in proc.stdout
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_notebook_example_trains_the_same_model_twice(tmp_path: Path) -> None:
    """The example seeds the model's initial weights as well as the fit: two processes
    running it print the same losses (the first epoch's row, timings left out)."""
    losses = []
    for attempt in range(2):
        script = tmp_path / f"again{attempt}.py"
        code = _notebook_example(tmp_path).replace(repr(str(tmp_path / "run")),
                                                   repr(str(tmp_path / f"run{attempt}")))  # fmt: skip
        script.write_text(code + '\nprint("losses:", history[0]["train/loss"], history[0]["val/loss"])\n')
        proc = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses.append([line for line in proc.stdout.splitlines() if line.startswith("losses:")])
    assert losses[0] and losses[0] == losses[1]


def test_hook_example_stops_the_fit(tmp_path: Path) -> None:
    scope: dict[str, object] = {}
    exec(compile(_python_block("## Writing a hook"), "README.md (Writing a hook)", "exec"), scope)
    from tests.conftest import make_engine

    stop = scope["StopAtAccuracy"](0.0)  # type: ignore[operator]
    engine = make_engine([stop], max_epochs=3)
    engine.fit()
    assert len(engine.state.history) == 1 and engine.state.stop_reason
