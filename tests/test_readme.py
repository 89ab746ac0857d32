"""The README's Python examples run as written, on a tiny tree instead of the user's photos.

Only what cannot run here is swapped: the data folder, the image size, pretrained weights (a
download), the number of epochs and the run folder; the pandas line is left out when pandas is
not installed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from tests.conftest import make_tree

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(after_heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index(after_heading) :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, f"no python block under {after_heading!r}"
    return match.group(1)


def _run_notebook_example(tmp_path: Path) -> dict[str, object]:
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
    scope: dict[str, object] = {}
    exec(compile(code, "README.md (In a notebook)", "exec"), scope)
    return scope


def test_notebook_example_runs(tmp_path: Path) -> None:
    history = _run_notebook_example(tmp_path)["history"]
    assert isinstance(history, list) and len(history) == 1
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_predict_example_runs_after_the_notebook_one(tmp_path: Path) -> None:
    scope = _run_notebook_example(tmp_path)
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
    exec(compile(code, "README.md (Predicting from Python)", "exec"), scope)
    probs, clf = scope["probs"], scope["clf"]
    assert getattr(probs, "shape", None) == (15, 3)  # the validation loader's 15 images
    top = clf.predict(str(val / "cat" / "1.jpg"), top_k=3)  # type: ignore[attr-defined]
    assert len(top) == 3 and {label for label, _ in top} == {"bird", "cat", "dog"}


def test_hook_example_stops_the_fit(tmp_path: Path) -> None:
    scope: dict[str, object] = {}
    exec(compile(_python_block("## Writing a hook"), "README.md (Writing a hook)", "exec"), scope)
    from tests.conftest import make_engine

    stop = scope["StopAtAccuracy"](0.0)  # type: ignore[operator]
    engine = make_engine([stop], max_epochs=3)
    engine.fit()
    assert len(engine.state.history) == 1 and engine.state.stop_reason
