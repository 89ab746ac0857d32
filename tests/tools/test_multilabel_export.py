"""A multi-label run through tools/export.py, tools/benchmark.py and tools/evaluate.py: every
format is checked in the task's own measures (per-label agreement at the thresholds, val mAP),
TTA averages sigmoids, and a CSV whose label column --label-sep splits is read back."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.metrics import average_precision_score

from tests.tools.tiny_run import train_tiny_multilabel_run
from tools import benchmark, evaluate, predict
from tools import export as tool
from trainer import export_check
from trainer.checkpoint import load_checkpoint
from trainer.data import ImageFolderData
from trainer.export import export_onnx
from trainer.export_formats import open_runner
from trainer.models import build_model
from trainer.multilabel import tuned_thresholds
from trainer.onnx_classifier import OnnxClassifier
from trainer.restore import model_from_checkpoint

FORMATS = ("onnx", "onnx-fp16", "onnx-int8")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny multi-label run, trained on a CSV label file whose label column --label-sep ';'
    splits (its checkpoints' args say so)."""
    return train_tiny_multilabel_run(tmp_path_factory.mktemp("ml_export"), label_sep=";")


def _data(run: Path) -> ImageFolderData:
    return ImageFolderData(run.parent / "data" / "labels.csv", img_size=16, workers=0,
                           label_sep=";")  # fmt: skip


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z.astype(np.float64)))


@pytest.fixture(scope="module")
def exported(run: Path) -> tuple[dict[str, Any], str]:
    """tools/export.py RUN --formats onnx,onnx-fp16,onnx-int8[,openvino when installed]: the
    report, and what it printed."""
    formats = FORMATS + (("openvino",) if importlib.util.find_spec("openvino") else ())
    argv = [str(run), "--formats", ",".join(formats), "--calib-images", "8"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert tool.main(argv) == 0
    return json.loads((run / "export_report.json").read_text()), out.getvalue()


def test_each_format_of_a_multilabel_model_is_checked_by_label_agreement_and_map(
    run: Path, exported: tuple[dict[str, Any], str]
) -> None:
    report, out = exported
    report = json.loads((run / "export_report.json").read_text())
    assert list(report["formats"])[:3] == list(FORMATS)
    # What each runtime decides on the 16 val images, at the model's thresholds, recomputed.
    clf = OnnxClassifier(run / "model.onnx")
    data = _data(run)
    images, labels = export_check.sample_images(clf, data.val_samples, 256,
                                                label_table=data.label_table)  # fmt: skip
    assert labels.shape == (16, 3)  # multi-hot
    model, _ = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "best.pt"), run)
    reference = export_check.torch_logits(model, images)
    cut = clf.thresholds
    assert cut.tolist() != [0.5] * 3  # tuned: the thresholds matter
    for fmt, entry in report["formats"].items():
        assert entry["agreement"] == "label_agreement" and entry["metric"] == "mAP", fmt
        assert not {"top1_agreement", "accuracy", "torch_accuracy"} & set(entry)
        logits = export_check.run_batches(open_runner(fmt, entry["path"]), images)
        decided = (_sigmoid(logits) >= cut) == (_sigmoid(reference) >= cut)
        assert entry["label_agreement"] == pytest.approx(decided.mean()), fmt
        assert entry["mAP"] == pytest.approx(
            average_precision_score(labels, _sigmoid(logits), average="macro"), abs=1e-6
        )
        assert entry["torch_mAP"] == pytest.approx(
            average_precision_score(labels, _sigmoid(reference), average="macro"), abs=1e-6
        )
        assert 0 <= entry["micro_f1"] <= 1 and entry["passed"] and entry["n_images"] == 16
    assert "label agreement" in out and "val mAP" in out and "top-1" not in out


def test_a_multilabel_format_below_its_bar_is_kept_as_failed_and_benchmarked_in_map(
    run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "model.onnx"
    monkeypatch.setitem(export_check.BARS, "onnx-int8", export_check.Bar(min_agreement=1.01))
    argv = [str(run), "--out", str(out), "--formats", "onnx-int8", "--calib-images", "4"]
    assert tool.main(argv) == 1
    err = capsys.readouterr().err
    assert "onnx-int8 (label agreement 1.0000 < 1.01; kept as" in err
    assert (tmp_path / "model.int8.FAILED.onnx").is_file()
    assert not (tmp_path / "model.int8.onnx").exists()
    # The benchmark's score and agreement columns are the task's, and say so.
    argv = [str(tmp_path), "--runs", "1", "--batches", "1", "--num-images", "6", "--threads", "1"]
    assert benchmark.main(argv) == 0
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert result["metric"] == "mAP" and result["agreement"] == "label_agreement"
    rows = {r["format"]: r for r in result["rows"]}
    assert list(rows) == ["pytorch", "onnx", "onnx-int8"] and rows["onnx-int8"]["failed"]
    for row in rows.values():
        assert not {"accuracy", "top1_agreement"} & set(row)
        assert 0 <= row["mAP"] <= 1 and 0 <= row["micro_f1"] <= 1
    assert rows["pytorch"]["label_agreement"] == rows["onnx"]["label_agreement"] == 1.0
    assert rows["onnx"]["mAP"] == pytest.approx(rows["pytorch"]["mAP"])
    console = Console(width=200, record=True)
    benchmark.print_result(result, console)
    header = console.export_text()
    assert "val mAP" in header and "label agree" in header and "val acc" not in header


def test_the_openvino_format_of_a_multilabel_model_is_checked_alike(
    exported: tuple[dict[str, Any], str],
) -> None:
    pytest.importorskip("openvino")
    entry = exported[0]["formats"]["openvino"]
    assert entry["agreement"] == "label_agreement" and entry["label_agreement"] == 1.0
    assert entry["mAP"] == pytest.approx(entry["torch_mAP"]) and entry["passed"]
    assert entry["max_abs_diff"] <= entry["tolerance"]


@pytest.fixture(scope="module")
def untrained(run: Path) -> Path:
    """A multi-label model.onnx of untrained (seeded) weights on the run's classes, with
    thresholds of its own: unlike the trained run, its mirror changes its decisions. Its last
    layer is scaled up, so logits are a few units: where the mean of two sigmoids is not the
    sigmoid of the mean logit."""
    data = _data(run)
    torch.manual_seed(1)
    model = build_model("small_cnn", 3)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(40)
        last.bias.mul_(40)
    mapping = {**data.labels_mapping(), "thresholds": [0.45, 0.5, 0.55]}
    path = run.parent / "untrained" / "model.onnx"
    return export_onnx(model, path, labels_mapping=mapping)


def test_flip_tta_of_a_multilabel_model_in_evaluate_and_predict(
    run: Path, untrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = run.parent / "data" / "labels.csv"
    argv = [str(untrained), "--data", str(labels), "--label-sep", ";", "--out", str(tmp_path),
            "--workers", "0"]  # fmt: skip
    assert evaluate.main([*argv, "--tta", "flip"]) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["tta"] == "flip" and result["thresholds"] == pytest.approx([0.45, 0.5, 0.55])
    # The numbers are those of OnnxClassifier's probabilities, with and without TTA.
    data = _data(run)
    paths = data.val_samples.paths()
    truth = data.label_table.numpy()[data.val_samples.targets]
    for tta, metrics in (("flip", result["metrics"]), ("none", result["without_tta"]["metrics"])):
        clf = OnnxClassifier(untrained, tta=tta)
        probs = clf.probabilities(np.stack([clf.preprocess(p) for p in paths]))
        expected = average_precision_score(truth, probs, average="macro")
        assert metrics["val/mAP"] == pytest.approx(expected, abs=1e-6), tta
        hits = (probs >= clf.thresholds) == (truth > 0.5)
        assert metrics["val/hamming_loss"] == pytest.approx(1 - hits.mean(), abs=1e-9), tta
        if tta == "flip":  # the F1-tuned thresholds lie between two of these probabilities
            tuned, _ = tuned_thresholds(torch.from_numpy(probs), torch.from_numpy(truth > 0.5))
            assert result["per_class"]["threshold"] == pytest.approx(tuned.tolist(), abs=1e-6)
    assert result["metrics"]["val/mAP"] != pytest.approx(result["without_tta"]["metrics"]["val/mAP"])
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "with --tta flip; without: mAP" in out
    # tools/predict.py --tta flip: the labels of the mean probabilities at the thresholds.
    csv_out = tmp_path / "preds.csv"
    images = [str(p) for p in paths[:6]]
    argv = ["--model", str(untrained), *images, "--tta", "flip", "--output", str(csv_out),
            "--all-probs"]  # fmt: skip
    assert predict.main(argv) == 0
    with open(csv_out, newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    clf = OnnxClassifier(untrained, tta="flip")
    probs = clf.probabilities(np.stack([clf.preprocess(p) for p in images]))
    for p, row in zip(images, probs, strict=True):
        assert rows[p]["labels"] == ";".join(label for label, _ in clf.predict(p, top_k=3))
        got = [float(rows[p][f"prob_{c}"]) for c in clf.classes]
        assert got == pytest.approx(row.tolist(), abs=2e-6)


def test_a_csv_run_whose_labels_label_sep_splits_is_exported_and_evaluated(
    run: Path, exported: tuple[dict[str, Any], str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    csv_run = run
    labels = csv_run.parent / "data" / "labels.csv"
    assert labels.read_text().splitlines()[4].endswith(",cat;dog,train")  # a label set
    # The export read the run's data as it was trained: checked on its 16 val images.
    report = json.loads((csv_run / "export_report.json").read_text())
    assert report["verified_on"] == "val" and report["n_images"] == 16
    results = {}
    for name in ("checkpoints/best.pt", "model.onnx"):
        argv = [str(csv_run / name), "--data", str(labels), "--label-sep", ";", "--workers", "0",
                "--out", str(tmp_path)]  # fmt: skip
        assert evaluate.main(argv) == 0, name
        results[name] = json.loads((tmp_path / "evaluation.json").read_text())
        assert results[name]["n_images"] == 16 and results[name]["task"] == "multilabel"
    pt, onnx = results["checkpoints/best.pt"]["metrics"], results["model.onnx"]["metrics"]
    assert onnx == pytest.approx(pt, abs=1e-5)
    # Without --label-sep the ONNX model cannot know it: one clear message, exit 2 ...
    argv = [str(csv_run / "model.onnx"), "--data", str(labels), "--workers", "0",
            "--out", str(tmp_path)]  # fmt: skip
    capsys.readouterr()
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--label-sep ';'" in err and err.count("error") == 1
    # ... unless the run's args.json beside it says (a tools/train.py run has one).
    (csv_run / "args.json").write_text(json.dumps({"label_sep": ";"}))
    try:
        assert evaluate.main(argv) == 0
    finally:
        (csv_run / "args.json").unlink()
    assert json.loads((tmp_path / "evaluation.json").read_text())["metrics"] == pytest.approx(pt)


def test_a_csv_run_is_evaluated_and_export_checked_on_a_jsonl_file_of_its_data(
    run: Path, exported: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    # The run's recorded --label-sep belongs to its CSV: a JSONL file of the same data (list
    # labels) needs none, and gets the same figures; the user passed no --label-sep to drop.
    jsonl = run.parent / "data" / "labels.jsonl"
    argv = [str(run / "checkpoints" / "best.pt"), "--data", str(jsonl), "--workers", "0",
            "--out", str(tmp_path / "jsonl")]  # fmt: skip
    assert evaluate.main(argv) == 0
    on_jsonl = json.loads((tmp_path / "jsonl" / "evaluation.json").read_text())
    argv = [str(run / "checkpoints" / "best.pt"), "--data", str(run.parent / "data" / "labels.csv"),
            "--workers", "0", "--out", str(tmp_path / "csv")]  # fmt: skip
    assert evaluate.main(argv) == 0
    on_csv = json.loads((tmp_path / "csv" / "evaluation.json").read_text())
    assert on_jsonl["n_images"] == on_csv["n_images"] == 16
    assert on_jsonl["metrics"] == pytest.approx(on_csv["metrics"])
    out = tmp_path / "export" / "model.onnx"
    assert tool.main([str(run), "--out", str(out), "--data", str(jsonl)]) == 0
    report = json.loads((out.parent / "export_report.json").read_text())
    assert report["verified_on"] == "val" and report["n_images"] == 16


def test_export_and_benchmark_refuse_data_of_other_labels(
    run: Path, exported: tuple[dict[str, Any], str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tools import benchmark

    rows = [json.loads(line) for line in (run.parent / "data" / "labels.jsonl").read_text().splitlines()]
    for r in rows:
        r["path"] = str(run.parent / "data" / r["path"])
        r["label"] = [x for x in r["label"] if x != "cat"]  # one label fewer
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = (run / "export_report.json").read_bytes()
    for main, argv in ((tool.main, [str(run), "--out", str(tmp_path / "m.onnx")]),
                       (benchmark.main, [str(run)])):  # fmt: skip
        capsys.readouterr()
        assert main([*argv, "--data", str(fewer)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "other classes" in err and "['cat']" in err, err
        assert "Traceback" not in err
    assert (run / "export_report.json").read_bytes() == before
