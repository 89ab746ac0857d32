"""One `error:` line and exit 2, no traceback: evaluate.py and export.py writing beside a
read-only checkpoint or on a full disk, predict.py given a labels_mapping.json that is not
UTF-8, and train.py meeting a full disk as it sets the run folder up.

Tests run as root here, which chmod cannot stop: the read-only folder is os.access saying so,
as it does for a read-only file system (EROFS), for root too.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import onnx
import pytest
from PIL import Image

from tests.conftest import FAST_CLI, NO_OUTPUTS
from tests.tools.tiny_run import train_tiny_run
from tools import evaluate, export, predict, train
from trainer.data import ImageFolderData

FREE = re.compile(r"has [\d.]+ [KMGT]?B free")  # trainer.io.free_space, in the message


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("clear_errors"), test_split=False)


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    access = os.access

    def fake(path: str | os.PathLike[str], mode: int, **kwargs: object) -> bool:
        if Path(path).resolve() == folder.resolve() and mode & os.W_OK:
            return False
        return access(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", fake)


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("tool", ["evaluate", "export"])
def test_writing_beside_a_read_only_checkpoint(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tool: str,
) -> None:  # fmt: skip
    folder = run / "checkpoints"
    before = sorted(p.name for p in folder.iterdir())
    _read_only(monkeypatch, folder)
    ckpt = str(folder / "best.pt")
    if tool == "evaluate":
        code = evaluate.main([ckpt, "--data", str(run.parent / "tree"), "--workers", "0"])
    else:
        code = export.main([ckpt, "--num-images", "2"])
    assert code == 2
    line = _one_error(capsys.readouterr().err)
    assert str(folder) in line and "--out" in line
    assert sorted(p.name for p in folder.iterdir()) == before
    # The flag the message names works (the export itself is test_export_tool's: a stand-in).
    out = tmp_path / ("eval" if tool == "evaluate" else "m.onnx")
    if tool == "evaluate":
        code = evaluate.main([ckpt, "--data", str(run.parent / "tree"), "--workers", "0",
                              "--out", str(out)])  # fmt: skip
    else:
        monkeypatch.setattr(export, "export_with_report", _stand_in_export)
        monkeypatch.setattr(export, "check_formats", lambda *args, **kwargs: {})
        code = export.main([ckpt, "--num-images", "2", "--out", str(out)])
    assert code == 0 and out.exists()


def _stand_in_export(model: object, out: Path, **kwargs: object) -> dict[str, object]:
    out.write_bytes(b"onnx")
    return {"verified_on": "val", "path": str(out), "weights": "raw", "top1_agreement": 1.0,
            "n_images": 2, "max_abs_diff": 0.0}  # fmt: skip


@pytest.mark.parametrize("tool", ["evaluate", "export"])
def test_a_full_disk_when_the_results_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tool: str
) -> None:
    model = tmp_path / "checkpoints" / "best.pt"

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(model.with_suffix(".onnx")))

    if tool == "evaluate":
        monkeypatch.setattr(evaluate, "evaluate", lambda *args, **kwargs: {})
        monkeypatch.setattr(evaluate, "print_report", lambda result: None)
        monkeypatch.setattr(evaluate, "write_outputs", full)
        code = evaluate.main([str(model), "--data", str(tmp_path)])
    else:
        monkeypatch.setattr(export, "export_checkpoint", full)
        code = export.main([str(model)])
    assert code == 2
    line = _one_error(capsys.readouterr().err)
    assert str(model.parent) in line and FREE.search(line) and "--out" in line


def test_a_labels_mapping_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An older export: no mapping inside the model, so it is read from the file beside it.
    x, y = (
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 3, 8, 8]) for n in "xy"
    )
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "model.onnx"
    onnx.save(onnx.helper.make_model(graph), path)
    sidecar = tmp_path / "labels_mapping.json"
    sidecar.write_bytes('{"idx_to_class": {"0": "caf\u00e9"}}'.encode("latin-1"))
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert predict.main(["--model", str(path), str(image)]) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(sidecar) in line and "UTF-8" in line


def test_a_full_disk_at_the_start_of_a_run_leaves_nothing_that_blocks_a_rerun(
    tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def full(self: object, path: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ImageFolderData, "write_report", full)  # after args.json
    out = tmp_path / "run"
    argv = ["--data", str(tiny_tree), "--out", str(out), "--epochs", "1", *FAST_CLI, *NO_OUTPUTS]
    assert train.main(argv) == 2
    line = _one_error(capsys.readouterr().err)
    assert str(out) in line and FREE.search(line)
    monkeypatch.undo()
    assert train.main(argv) == 0  # the same command, once there is space
