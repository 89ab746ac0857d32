"""tools/bench.py --startup on a tiny generated tree: every run happens and the JSON is well
formed. No timing is asserted (a speed on a shared machine says nothing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tools import bench


def test_startup_bench_writes_the_documented_json(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    tree = tmp_path / "tree"
    argv = ["--startup", "--classes", "3", "--train-per-class", "2", "--val-per-class", "1"]
    argv += ["--rounds", "1", "--tree-dir", str(tree), "--workers", "1", "--img-size", "16"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    s = json.loads(out.read_text())["startup"]
    assert s["files"] == 9 == len(list(tree.rglob("*.jpg")))
    for key in ("reference_s", "first_step_cold_s", "first_step_warm_s", "resume_s"):
        assert math.isfinite(s[key]) and s[key] > 0, key
    for key in ("ratio_cold", "ratio_warm", "ratio_resume", "main_peak_rss_mib"):
        assert math.isfinite(s[key]) and s[key] > 0, key
    # One train and one val loader worker, both persistent: two processes measured.
    assert len(s["workers_peak_rss_mib"]) == len(s["workers_private_mib"]) == 2
    assert all(v > 0 for v in s["workers_private_mib"])
    assert {k: len(v) for k, v in s["runs"].items()} == dict.fromkeys(s["runs"], 1)
