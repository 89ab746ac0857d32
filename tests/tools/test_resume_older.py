"""--resume from an older checkpoint of a run: refused in that run folder (its later
checkpoints would go), and branched off into a new folder with --out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_CLI, NO_OUTPUTS
from tools import train


def _files(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Each file's bytes and mtime: a file rewritten with the same bytes counts as written."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_an_older_checkpoint_is_refused_in_its_run_and_branches_into_a_new_one(
    tiny_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, branch = tmp_path / "run", tmp_path / "branch"
    argv = ["--data", str(tiny_tree), "--out", str(run), "--epochs", "2", "--top-k", "2",
            *FAST_CLI, *NO_OUTPUTS]  # fmt: skip
    assert train.main(argv) == 0
    before = _files(run)
    assert {"checkpoints/epoch_000.pt", "checkpoints/epoch_001.pt"} <= set(before)
    older = run / "checkpoints" / "epoch_000.pt"
    capsys.readouterr()

    assert train.main(["--resume", str(older), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert f"--resume {older} --out NEW_FOLDER" in " ".join(err.split())
    assert _files(run) == before  # nothing deleted, relinked or rewritten

    assert train.main(["--resume", str(older), "--out", str(branch), "--epochs", "2"]) == 0
    assert _files(run) == before
    ckpt = torch.load(branch / "checkpoints" / "last.pt", weights_only=True)
    assert len(ckpt["state"]["history"]) == 2  # epoch 0 from the run, epoch 1 trained here

    # A run folder whose checkpoints/ is a link elsewhere: a resume would write and delete
    # there, outside the run folder. Refused before anything is written, on either side.
    moved = tmp_path / "elsewhere"
    (branch / "checkpoints").rename(moved)
    (branch / "checkpoints").symlink_to(moved, target_is_directory=True)
    kept = _files(moved)
    capsys.readouterr()
    assert train.main(["--resume", str(branch), "--epochs", "3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and "Traceback" not in err
    assert f"{branch / 'checkpoints'} is a symbolic link" in err
    assert _files(moved) == kept
