"""``import trainer, hooks`` stays cheap: the heavy optional libraries load only when used.

A structural check, not a timed one: timings flake on a loaded machine, a module that is not
imported costs nothing on any machine. ``python -X importtime -c "import torch, torchvision;
import trainer, hooks"`` shows the time itself (issue 4 asks for at most 0.3 s over torch).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import make_tree

# matplotlib and rich only draw at epoch ends; onnx/onnxruntime only export; each costs
# 0.1 to 0.6 s to import. torchmetrics is listed because importing it imports matplotlib.pyplot.
# jinja2 (about 0.05 s) only renders report.html.
HEAVY = ("jinja2", "matplotlib", "matplotlib.pyplot", "onnx", "onnxruntime", "rich", "torchmetrics")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    """In one fresh interpreter (this test process has imported everything already): the
    heavy modules loaded after ``import trainer, hooks``, then after building an engine."""
    tree = make_tree(tmp_path_factory.mktemp("import_cost") / "tree")
    code = (
        "import json, sys\n"
        "import torch, torchvision\n"
        "import trainer, hooks\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
        "from trainer import Engine, ImageFolderData, build_model\n"
        f"data = ImageFolderData({str(tree)!r}, img_size=16, batch_size=4, workers=0)\n"
        "engine = Engine(build_model('small_cnn', data.num_classes), data, device='cpu')\n"
        f"print(json.dumps([m for m in {[*HEAVY, 'scipy']!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return [list(json.loads(line)) for line in out.stdout.strip().splitlines()[-2:]]


def test_import_trainer_and_hooks_loads_no_heavy_optional_library(
    loaded: list[list[str]],
) -> None:
    assert loaded[0] == []


def test_building_an_engine_loads_no_heavy_optional_library(loaded: list[list[str]]) -> None:
    # torchmetrics (with scipy and matplotlib: over a second) counts the first validation's
    # confusion matrix; building the engine and the first training step go without it.
    assert loaded[1] == []
