"""A 3-epoch CLI run leaves every output; predict.py and evaluate.py work on what it wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tests.conftest import FAST_CLI, make_tree
from tools import evaluate, predict, train
from trainer.checkpoint import load_checkpoint
from trainer.data import ImageFolderData
from trainer.engine import Engine
from trainer.export import read_onnx_metadata
from trainer.hook import Hook
from trainer.models import build_model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("e2e")
    counts = {"apple": 8, "banana": 6, "cherry": 5, "date": 5, "elder berry": 4}
    data_dir = make_tree(base / "data", counts, size=(24, 20), splits=("train", "val", "test"))
    out = base / "run"
    argv = [
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--epochs",
        "3",
        *FAST_CLI,
        "--ema-decay",
        "0.9",
        "--sampler",
        "balanced",
        "--crop-pct",
        "0.95",
    ]
    assert train.main(argv) == 0
    return {"data": data_dir, "out": out}


def test_run_leaves_all_six_outputs_and_a_verified_onnx(run: dict[str, Any]) -> None:
    out = run["out"]
    for epoch in range(3):
        assert (out / "plots" / "confusion_matrix" / f"epoch_{epoch:03d}.png").is_file()
        assert (out / "plots" / "samples" / f"epoch_{epoch:03d}_fixed.png").is_file()
        assert (out / "plots" / "samples" / f"epoch_{epoch:03d}_mistakes.png").is_file()
    for name in (
        "dataset_stats.json",
        "model_info.json",
        "labels_mapping.json",
        "sampler_distribution.csv",
        "metrics.csv",
        "plots/loss.png",
        "plots/accuracy.png",
        "plots/lr.png",
        "model.onnx",
        "export_report.json",
    ):
        assert (out / name).is_file(), name
    for png in (out / "plots").rglob("*.png"):
        with Image.open(png) as img:
            assert img.width > 50 and img.height > 50
    report = json.loads((out / "export_report.json").read_text())
    assert report["top1_agreement"] >= 0.995 and report["n_images"] > 0
    # --crop-pct travels to the mapping beside the model and inside it.
    fields = {"crop_pct": 0.95, "resize_mode": "crop", "resize_size": 16}
    for mapping in (json.loads((out / "labels_mapping.json").read_text()),
                    read_onnx_metadata(out / "model.onnx")):  # fmt: skip
        assert {k: mapping[k] for k in fields} == fields
    rows = list(csv.DictReader((out / "sampler_distribution.csv").open()))
    assert len(rows) == 3 * 5


def _engine_val_predictions(run: dict[str, Any]) -> dict[str, int]:
    """Predictions of the exported (best, EMA) weights through the engine's own val loop."""
    ckpt = load_checkpoint(run["out"] / "checkpoints" / "best.pt")
    data = ImageFolderData(run["data"], img_size=16, batch_size=8, workers=0, crop_pct=0.95)
    model = build_model("small_cnn", data.num_classes)
    model.load_state_dict(ckpt["ema"]["module"])
    preds: list[int] = []

    class Capture(Hook):
        def on_validation_batch_end(self, engine, outputs, batch, batch_idx) -> None:
            preds.extend(outputs["logits"].argmax(1).tolist())

    Engine(model, data, device="cpu", hooks=[Capture()]).validate()
    return {str(p): y for (p, _), y in zip(data.val_samples, preds, strict=True)}


def test_predict_agrees_with_engine_on_val(run: dict[str, Any], tmp_path: Path) -> None:
    expected = _engine_val_predictions(run)
    mapping = json.loads((run["out"] / "labels_mapping.json").read_text())
    output = tmp_path / "preds.json"
    code = predict.main(
        [
            "--model",
            str(run["out"] / "model.onnx"),
            str(run["data"] / "val"),
            "--output",
            str(output),
            "--top-k",
            "3",
        ]
    )
    assert code == 0
    rows = json.loads(output.read_text())
    assert len(rows) == len(expected)
    agree = sum(mapping["class_to_idx"][r["label"]] == expected[r["path"]] for r in rows)
    assert agree / len(rows) >= 0.995


def test_evaluate_on_the_test_split(run: dict[str, Any], tmp_path: Path) -> None:
    for model in ("model.onnx", "checkpoints/best.pt"):
        code = evaluate.main(
            [
                str(run["out"] / model),
                "--data",
                str(run["data"]),
                "--out",
                str(tmp_path / model.replace("/", "_")),
            ]
        )
        assert code == 0
        result = json.loads((tmp_path / model.replace("/", "_") / "evaluation.json").read_text())
        assert result["split"] == "test" and result["n_images"] == 28
        assert len(result["per_class"]["f1"]) == 5 and result["top5"] == pytest.approx(1.0)
        assert torch.tensor(result["confusion_matrix"]).sum() == 28
