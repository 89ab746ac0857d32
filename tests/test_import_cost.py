"""``import trainer, hooks`` stays cheap: the heavy optional libraries load only when used.

A structural check, not a timed one: timings flake on a loaded machine, a module that is not
imported costs nothing on any machine. ``python -X importtime -c "import torch, torchvision;
import trainer, hooks"`` shows the time itself (issue 4 asks for at most 0.3 s over torch).
"""

from __future__ import annotations

import json
import subprocess
import sys

# matplotlib and rich only draw at epoch ends; onnx/onnxruntime only export; each costs
# 0.1 to 0.6 s to import. torchmetrics is listed because importing it imports matplotlib.pyplot.
HEAVY = ("matplotlib", "matplotlib.pyplot", "onnx", "onnxruntime", "rich", "torchmetrics")


def _loaded_after_import() -> list[str]:
    code = (
        "import json, sys\n"
        "import torch, torchvision\n"
        "import trainer, hooks\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    )
    # A fresh interpreter: this test process has imported everything already.
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_trainer_and_hooks_loads_no_heavy_optional_library() -> None:
    assert _loaded_after_import() == []
