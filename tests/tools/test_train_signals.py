"""tools/train.py stopped by a signal to its whole process group, as SLURM, systemd, a
terminal's Ctrl-C and ``kill -- -PGID`` send it: the loader workers get it too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST_CLI, NO_OUTPUTS, make_tree

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "train.py"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_stops_like_a_plain_one(
    tmp_path: Path, signum: int
) -> None:
    data = make_tree(tmp_path / "data", {"a": 60, "b": 60}, size=(16, 16))
    out = tmp_path / "run"
    argv = [sys.executable, str(SCRIPT), "--data", str(data), "--out", str(out),
            "--epochs", "50", *FAST_CLI, "--batch-size", "4", "--workers", "2", *NO_OUTPUTS]  # fmt: skip
    # A session (and process group) of its own, so the signal reaches only this run.
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        # Polls a file the other process writes; there is no thread of ours to wait on.
        while not (out / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "killed by signal" not in err, err
    assert err.count("finishing the current step") == 1, err  # once, not once per worker
    assert (out / "checkpoints" / "interrupted.pt").is_file()
