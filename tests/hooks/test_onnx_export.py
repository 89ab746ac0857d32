"""OnnxExportHook: best weights exported and verified on val images; failures fail the fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hooks.checkpoint import CheckpointHook
from hooks.onnx_export import OnnxExportHook, first_images
from tests.conftest import make_tree
from trainer import export
from trainer.checkpoint import load_checkpoint
from trainer.data import ImageFolderData
from trainer.engine import Engine
from trainer.export import ExportVerificationError, read_onnx_metadata
from trainer.hook import Hook
from trainer.io import is_temp_file
from trainer.models import build_model


def fit(out: Path, root: Path, hooks: list[Hook], epochs: int = 2) -> Engine:
    data = ImageFolderData(root, img_size=16, batch_size=8, workers=0)
    engine = Engine(
        build_model("small_cnn", data.num_classes),
        data,
        max_epochs=epochs,
        hooks=hooks,
        device="cpu",
        lr=3e-3,
        ema_decay=0.9,
        sanity_steps=0,
        args={"model": "small_cnn", "img_size": 16},
    )
    engine.fit()
    return engine


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One fit with checkpointing and export, shared by the tests that only read its outputs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = tmp_path_factory.mktemp("onnx_hook")
        root = make_tree(base / "tree")
        out = base / "run"
        hook = OnnxExportHook(out, num_verify_images=10)
        engine = fit(out, root, [CheckpointHook(out), hook])
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "out": out, "hook": hook, "engine": engine}


def test_exports_and_reports(run: dict[str, Any]) -> None:
    out, hook = run["out"], run["hook"]
    assert hook.path == out / "model.onnx" and hook.path.is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert {"top1_agreement", "max_abs_diff", "n_images"} <= set(report)
    assert report["top1_agreement"] >= 0.995
    assert report["n_images"] == 10
    assert report["verified_on"] == "val"
    assert report["weights"] == "ema"
    assert report["checkpoint"] == str(out / "checkpoints" / "best.pt")
    assert hook.report == report
    assert (out / "labels_mapping.json").is_file()
    meta = read_onnx_metadata(hook.path)
    data = run["engine"].data
    # The split travels with the model, so tools/evaluate.py can score the run's own val images.
    split = {"seed": data.seed, "val_fraction": data.val_fraction}
    assert meta == {**data.labels_mapping(), "split": split}


def test_onnx_holds_best_ema_weights(run: dict[str, Any]) -> None:
    """The file computes what best.pt's EMA weights compute on normalised val images."""
    engine = run["engine"]
    ckpt = load_checkpoint(run["out"] / "checkpoints" / "best.pt")
    model = build_model("small_cnn", 3)
    model.load_state_dict(ckpt["ema"]["module"])
    data = engine.data
    images = first_images(data.val_loader(), 8, data.mean, data.std)
    assert images is not None
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    session = ort.InferenceSession(str(run["hook"].path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": images.numpy()})
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_without_best_uses_eval_model(run: dict[str, Any], tmp_path: Path) -> None:
    model, weights, checkpoint = OnnxExportHook(tmp_path)._best_model(run["engine"])
    assert model is run["engine"].eval_model
    assert (weights, checkpoint) == ("ema", None)


def test_failed_verification_fails_the_fit(
    run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_export(model: Any, path: Any, **kwargs: Any) -> Path:
        # The real export is covered above; a copy keeps this test from paying for another.
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run["out"] / "model.onnx", path)
        return Path(path)

    def failing_verify(path: Any, model: Any, images: torch.Tensor, **kwargs: Any) -> dict:
        return {
            "top1_agreement": 0.5,
            "max_abs_diff": 3.0,
            "tolerance": 1e-3,
            "n_images": len(images),
            "passed": False,
        }

    monkeypatch.setattr(export, "export_onnx", fake_export)
    monkeypatch.setattr(export, "verify_onnx", failing_verify)
    out = tmp_path / "run"
    out.mkdir()
    good = b"the previous, verified model"
    (out / "model.onnx").write_bytes(good)
    hook = OnnxExportHook(out, num_verify_images=4)
    with pytest.raises(ExportVerificationError, match="is as it was"):
        fit(out, run["root"], [CheckpointHook(out), hook], epochs=1)
    # The failed model never replaced the good one, and left no temp file.
    assert (out / "model.onnx").read_bytes() == good
    assert not [p for p in out.rglob("*") if is_temp_file(p)]
    assert (out / "checkpoints" / "last.pt").is_file()
    assert (out / "checkpoints" / "best.pt").is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["passed"] is False and report["verified_on"] == "val"
    assert hook.report == report


class Boom(Hook):
    def on_train_epoch_end(self, engine: Engine) -> None:
        raise RuntimeError("boom")


def test_nothing_exported_when_the_fit_fails(run: dict[str, Any], tmp_path: Path) -> None:
    hook = OnnxExportHook(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, run["root"], [Boom(), hook], epochs=1)
    assert hook.path is None and hook.report is None
    assert not (tmp_path / "model.onnx").exists()


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_verify_images"):
        OnnxExportHook(tmp_path, num_verify_images=0)


@pytest.mark.parametrize("passes", [True, False], ids=["passed", "failed"])
def test_weights_over_2gb_swap_with_their_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passes: bool
) -> None:
    """A model with external weights: its data file is replaced only with the model."""
    (tmp_path / "model.onnx").write_bytes(b"old model")
    (tmp_path / "model.onnx.data").write_bytes(b"old weights")

    def fake_export(model: Any, path: Any, *, data_name: str, **kwargs: Any) -> Path:
        Path(path).write_bytes(b"new model")
        (Path(path).parent / data_name).write_bytes(b"new weights")
        return Path(path)

    def verify(path: Any, model: Any, images: torch.Tensor, **kwargs: Any) -> dict:
        return {"passed": passes, "n_images": 1, "top1_agreement": 1.0 * passes,
                "max_abs_diff": 0.0, "tolerance": 1e-3}  # fmt: skip

    monkeypatch.setattr(export, "export_onnx", fake_export)
    monkeypatch.setattr(export, "verify_onnx", verify)
    mapping = {"image_size": 8, "idx_to_class": {"0": "a"}}
    args = (torch.nn.Identity(), tmp_path / "model.onnx")
    kwargs = {"labels_mapping": mapping, "images": torch.zeros(1, 3, 8, 8)}
    if passes:
        export.export_and_verify(*args, **kwargs)
    else:
        with pytest.raises(ExportVerificationError):
            export.export_and_verify(*args, **kwargs)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix != ".json"}
    want = (b"new model", b"new weights") if passes else (b"old model", b"old weights")
    assert files["model.onnx"] == want[0]
    assert sorted(files.values()) == sorted(want)  # no other model or data file left
