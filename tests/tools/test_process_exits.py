"""Processes that end by themselves: scripts using the library, and tools/train.py after an
error inside fit, with loader workers (which ignore SIGTERM, see trainer/data/workers.py).

The one place real processes are needed: the hang was at interpreter exit, which pytest's own
process never reaches. Each run is bounded: a process that hangs fails the test. The README's
notebook example runs as a script in tests/test_readme.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import FAST_CLI, NO_OUTPUTS, make_tree

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 60  # seconds; a run here takes a few


def _run(tmp_path: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(code, encoding="utf-8")
    # A timeout raises TimeoutExpired (after killing the child): the test fails, the suite goes on.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's packages, tools too
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=LIMIT,
        env=env,
    )


def test_a_script_that_keeps_its_loaders_exits(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    code = f"""
        from trainer import ImageFolderData
        data = ImageFolderData({str(tree)!r}, img_size=16, batch_size=4, workers=2)
        loader = data.train_loader()
        batches = sum(1 for _ in loader)
        val = iter(data.val_loader())
        next(val)  # a pool left in the middle of an epoch
        print("batches", batches)
    """
    proc = _run(tmp_path, textwrap.dedent(code))
    assert proc.returncode == 0, proc.stderr
    assert "batches 4" in proc.stdout


# tools/train.py's main() with one more hook, which raises inside fit.
FAILING_RUN = """
    import errno, sys
    from tools import train
    from hooks import Hook

    class Fails(Hook):
        def on_train_batch_end(self, engine, outputs, batch, batch_idx):
            if batch_idx == 1:  # the workers are running
                raise {error}

    default_hooks = train.default_hooks
    train.default_hooks = lambda *a, **k: [*default_hooks(*a, **k), Fails()]
    sys.exit(train.main(sys.argv[1:]))
"""


def _train_failing(tmp_path: Path, error: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    tree = make_tree(tmp_path / "tree")
    out = tmp_path / "run"
    code = textwrap.dedent(FAILING_RUN.format(error=error))
    argv = ["--data", str(tree), "--out", str(out), "--epochs", "1", *FAST_CLI, *NO_OUTPUTS,
            "--batch-size", "4", "--workers", "2"]  # fmt: skip
    return _run(tmp_path, code, *argv), out


def test_train_exits_after_an_unexpected_error_in_fit(tmp_path: Path) -> None:
    proc, _ = _train_failing(tmp_path, 'RuntimeError("a hook failed")')
    assert proc.returncode == 1, proc.stderr
    assert "RuntimeError: a hook failed" in proc.stderr


def test_train_exits_with_a_clear_error_on_a_full_disk(tmp_path: Path) -> None:
    error = 'OSError(errno.ENOSPC, "No space left on device")'
    proc, out = _train_failing(tmp_path, error)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out) in lines[0] and "free" in lines[0]
