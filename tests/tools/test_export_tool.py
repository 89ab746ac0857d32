"""tools/export.py: checkpoint -> verified ONNX, random fallback, and its exit statuses."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import make_tree
from tests.tools.tiny_run import train_tiny_run
from tools import export as tool
from trainer import export
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data import ImageFolderData
from trainer.export import read_onnx_metadata
from trainer.models import build_model
from trainer.restore import normalize

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("export_tool"), test_split=False)


def test_exports_best_ema_weights_verified_on_val(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exported" / "model.onnx"
    assert tool.main([str(run / "checkpoints" / "best.pt"), "--out", str(out)]) == 0
    report = json.loads((out.parent / "export_report.json").read_text())
    assert {"top1_agreement", "max_abs_diff", "n_images"} <= set(report)
    assert report["top1_agreement"] >= 0.995
    assert report["verified_on"] == "val" and report["weights"] == "ema"
    # The tiny tree has 15 val images; all of them, fewer than --num-images' 64.
    assert report["n_images"] == 15

    meta = read_onnx_metadata(out)
    data = ImageFolderData(run.parent / "tree", img_size=16, batch_size=15, workers=0)
    # The run's split travels with the model, for tools/evaluate.py on a tree of class folders.
    assert meta == {**data.labels_mapping(), "split": {"seed": 0, "val_fraction": 0.2}}

    # The file computes what the checkpoint's EMA weights compute.
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    model = build_model("small_cnn", 3).eval()
    model.load_state_dict(ckpt["ema"]["module"])
    images = normalize(next(iter(data.val_loader()))[0], data.mean, data.std)
    with torch.no_grad():
        expected = model(images).numpy()
    (actual,) = ort.InferenceSession(str(out)).run(None, {"input": images.numpy()})
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_random_images_when_no_data_and_raw_weights(run: Path, tmp_path: Path) -> None:
    """A checkpoint moved away from its data still exports, and the report says how."""
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["args"]["data"] = str(tmp_path / "gone")
    moved = save_checkpoint(ckpt, tmp_path / "elsewhere" / "last.pt")
    report = tool.export_checkpoint(moved, ema=False, num_images=5)
    assert Path(report["path"]) == moved.with_suffix(".onnx")
    assert report["verified_on"] == "random" and report["data"] is None
    assert report["weights"] == "model" and report["n_images"] == 5
    saved = json.loads((moved.parent / "export_report.json").read_text())
    assert saved["verified_on"] == "random"


def test_failed_verification_exits_1(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_export(model: Any, path: Any, **kwargs: Any) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")  # never loaded: verification is faked too
        return Path(path)

    def failing_verify(path: Any, model: Any, images: torch.Tensor, **kwargs: Any) -> dict:
        return {
            "top1_agreement": 0.25,
            "max_abs_diff": 2.0,
            "tolerance": 1e-3,
            "n_images": len(images),
            "passed": False,
        }

    monkeypatch.setattr(export, "export_onnx", fake_export)
    monkeypatch.setattr(export, "verify_onnx", failing_verify)
    out = tmp_path / "model.onnx"
    code = tool.main([str(run / "checkpoints" / "best.pt"), "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the ONNX export failed verification") and "0.25" in err
    assert json.loads((tmp_path / "export_report.json").read_text())["passed"] is False


def _bad_checkpoint(tmp_path: Path, run: Path) -> Path:
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    ckpt["args"] = {}
    return save_checkpoint(ckpt, tmp_path / "noargs.pt")


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda tmp, run: [str(tmp / "missing.pt")], "does not exist"),
        (lambda tmp, run: [str(_text_file(tmp))], "could not be read"),
        (lambda tmp, run: [str(_bad_checkpoint(tmp, run))], "--model"),
        (lambda tmp, run: [str(run), "--data", str(tmp / "nope")], "does not exist"),
        (lambda tmp, run: [str(run), "--opset", "12"], "--opset"),
    ],
    ids=["missing", "not-a-checkpoint", "no-architecture", "bad-data", "old-opset"],
)
def test_user_mistakes_exit_2(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_args: Any,
    expected: str,
) -> None:
    assert tool.main(make_args(tmp_path, run)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("*.onnx")) and not (run / "checkpoints" / "best.onnx").exists()


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    return path


def test_script_runs_standalone(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export.py"), str(tmp_path / "missing.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_one_line_per_export(
    run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pytest's log capture holds the root logger; without handlers, main() installs its own
    # INFO handler on stderr, as on a terminal. monkeypatch puts pytest's back afterwards.
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    out = tmp_path / "model.onnx"
    assert tool.main([str(run / "checkpoints" / "best.pt"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and captured.out.startswith(f"exported {out} ")
    assert "unused" not in captured.err and "rewrite rules" not in captured.err, captured.err


@pytest.mark.parametrize("fields", [{"crop_pct": 1.0}, {"val_resize": "squash"}])
def test_the_verification_images_get_the_mappings_crop_pct_and_resize_mode(
    tmp_path: Path, fields: dict[str, Any]
) -> None:
    tree = make_tree(tmp_path / "tree", {"a": 3, "b": 2}, size=(24, 16))
    data = ImageFolderData(tree, img_size=16, batch_size=8, workers=0, **fields)
    images, verified_on, _ = tool.verification_images({}, data.labels_mapping(), data=tree)
    expected = normalize(torch.cat([x for x, _ in data.val_loader()]), data.mean, data.std)
    default = ImageFolderData(tree, img_size=16, batch_size=8, workers=0).val_loader()
    assert verified_on == "val" and torch.equal(images, expected)
    assert not torch.equal(images, normalize(next(iter(default))[0], data.mean, data.std))
