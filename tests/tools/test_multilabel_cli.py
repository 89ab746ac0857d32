"""A tiny multi-label CLI run with the default hooks: every hook runs or stands down cleanly,
the run folder holds the multi-label outputs, and predict.py / evaluate.py read them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FAST_CLI, NO_OUTPUTS
from tools import evaluate, predict, train
from trainer.checkpoint import load_checkpoint
from trainer.onnx_classifier import OnnxClassifier

CLASSES = ("cat", "dog", "sky")


def write_multilabel_set(root: Path, n_train: int = 30, n_val: int = 15) -> Path:
    """16 px images whose label set shows in their colour (red: cat, green: dog, blue: sky; a
    channel at 200 when the image carries its label), some with no label, as a JSONL file."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(n_train + n_val):
        on = [bool((i >> k) & 1) for k in range(3)]  # every set, the empty one included
        pixels = rng.integers(0, 50, (16, 16, 3)) + np.array(on) * 150
        Image.fromarray(pixels.astype(np.uint8)).save(root / "img" / f"{i}.png")
        labels = [c for c, o in zip(CLASSES, on, strict=True) if o]
        split = "train" if i < n_train else "val"
        lines.append(json.dumps({"path": f"img/{i}.png", "label": labels, "split": split}))
    (root / "labels.jsonl").write_text("\n".join(lines) + "\n")
    return root / "labels.jsonl"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("multilabel")
    labels = write_multilabel_set(base / "data")
    out = base / "run"
    argv = ["--data", str(labels), "--out", str(out), "--epochs", "2", *FAST_CLI,
            "--lr", "0.01", "--mixup", "0.2"]  # fmt: skip
    assert train.main(argv) == 0
    return {"labels": labels, "out": out}


def test_a_multilabel_run_leaves_its_outputs(run: dict[str, Any]) -> None:
    out = run["out"]
    mapping = json.loads((out / "labels_mapping.json").read_text())
    assert mapping["task"] == "multilabel" and mapping["activation"] == "sigmoid"
    assert len(mapping["thresholds"]) == 3 and mapping["thresholds"] != [0.5] * 3  # tuned
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["state"]["thresholds"] == mapping["thresholds"]  # the best epoch's
    args = json.loads((out / "args.json").read_text())
    assert args["monitor"] == "val/mAP" and args["crop_scale"] == 1.0  # the task's defaults
    assert args["val_resize"] == "squash" and mapping["resize_mode"] == "squash"
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0 <= float(r["val/mAP"]) <= 1 for r in rows)
    with open(out / "per_class.csv", newline="") as f:
        per_class = list(csv.DictReader(f))
    assert [r["class"] for r in per_class[-3:]] == list(CLASSES) and "ap" in per_class[0]
    for epoch in range(2):
        summary = json.loads((out / "plots" / "confusion_matrix" / f"epoch_{epoch:03d}.json")
                             .read_text())  # fmt: skip
        assert summary["columns"] == ["tp", "fn", "fp", "tn"]
        assert all(sum(row) == 15 for row in summary["counts"])  # each class: every val image
        assert (out / "plots" / "samples" / f"epoch_{epoch:03d}_fixed.png").is_file()
    for name in ("model.onnx", "report.html", "dataset_stats.json", "plots/loss.png",
                 "sampler_distribution.csv", "plots/confusion_matrix/epoch_001.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out / "top_losses.csv").exists()  # one label per image: off
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert stats["labels_per_image"]["train"] == {"0": 4, "1": 12, "2": 11, "3": 3}
    report = json.loads((out / "export_report.json").read_text())
    assert report["label_agreement"] >= 0.995 and report["passed"]
    html = (out / "report.html").read_text()
    assert "Precision-recall" in html


def test_predict_and_evaluate_read_the_multilabel_model(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, model = run["out"], run["out"] / "model.onnx"
    clf = OnnxClassifier(model)
    image = run["labels"].parent / "img" / "40.png"
    probs = clf.probabilities(clf.preprocess(image)[None])[0]
    found = clf.predict(image, top_k=3)
    assert [label for label, _ in found] == [
        CLASSES[i] for i in np.argsort(-probs) if probs[i] >= clf.thresholds[i]
    ]
    assert len(clf.predict(image, top_k=1)) <= 1
    csv_out = tmp_path / "preds.csv"
    assert predict.main(["--model", str(model), str(image.parent), "--output", str(csv_out),
                         "--all-probs"]) == 0  # fmt: skip
    with open(csv_out, newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["40.png"]["labels"] == ";".join(label for label, _ in found)
    predicted = {p.name: clf.predict(p, top_k=3) for p in sorted(image.parent.glob("*.png"))}
    assert any(predicted.values())  # some image has labels, so an empty column shows
    for name, labels in predicted.items():
        assert rows[name]["labels"].split(";")[:3] == [la for la, _ in labels] or not labels
    assert float(rows["40.png"]["prob_sky"]) == pytest.approx(probs[2], abs=1e-6)
    assert evaluate.main([str(model), "--data", str(run["labels"]), "--out", str(tmp_path),
                          "--workers", "0"]) == 0  # fmt: skip
    result = json.loads((tmp_path / "evaluation.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        best = max(float(r["val/mAP"]) for r in csv.DictReader(f))
    assert result["metrics"]["val/mAP"] == pytest.approx(best, abs=1e-4)
    mapping = json.loads((out / "labels_mapping.json").read_text())
    assert result["thresholds"] == pytest.approx(mapping["thresholds"])  # the model's own
    # (--tta flip on a multi-label model: tests/tools/test_multilabel_export.py)


@pytest.mark.parametrize(
    "change, flags, expect",
    [
        ({"label": ["cat", 7.5]}, [], r"labels\.jsonl:1: the label list holds 7\.5"),
        ({}, ["--task", "multiclass"], r"labels\.jsonl:1: a list of labels, but --task multiclass"),
        ({}, ["--label-sep", ";"], r"labels\.jsonl:1: --label-sep splits a CSV label column"),
    ],
)
def test_bad_multilabel_input_is_one_message_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict, flags: list, expect: str
) -> None:
    labels = write_multilabel_set(tmp_path / "data", n_train=4, n_val=2)
    lines = labels.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), **change})
    labels.write_text("\n".join(lines) + "\n")
    argv = ["--data", str(labels), "--out", str(tmp_path / "run"), *FAST_CLI, *flags]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and re.search(expect, err.replace("\n", " "))
    assert not (tmp_path / "run").exists()


def test_a_mapping_rebuilt_from_a_multilabel_checkpoint_keeps_the_task(
    run: dict[str, Any],
) -> None:
    # Without the run's labels_mapping.json (a checkpoint copied elsewhere), the mapping an
    # export or an evaluation rebuilds from the checkpoint is still multi-label.
    from trainer.restore import labels_mapping_from_checkpoint

    best = load_checkpoint(run["out"] / "checkpoints" / "best.pt")
    mapping = labels_mapping_from_checkpoint(best, run["out"] / "elsewhere" / "best.pt")
    assert mapping["task"] == "multilabel" and mapping["activation"] == "sigmoid"
    assert mapping["thresholds"] == best["state"]["thresholds"]


def test_a_multilabel_run_of_the_previous_version_resumes_with_its_settings(
    run: dict[str, Any], tmp_path: Path
) -> None:
    # The previous version wrote the values in use into args.json (the task's defaults
    # included); they replay as given values. The run as if made with --crop-scale 0.5 (which
    # the previous version kept): a copy, so the fixture stays as it was.
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run["out"], copy)
    args = json.loads((copy / "args.json").read_text())
    assert (args["crop_scale"], args["val_resize"], args["monitor"]) == (1.0, "squash", "val/mAP")
    (copy / "args.json").write_text(json.dumps({**args, "crop_scale": 0.5}))
    assert train.main(["--resume", str(copy), "--epochs", "3", *NO_OUTPUTS]) == 0
    with open(copy / "metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2"]
    resumed = json.loads((copy / "args.json").read_text())
    assert {k: resumed[k] for k in ("crop_scale", "val_resize", "monitor", "crop_pct")} == {
        "crop_scale": 0.5,
        "val_resize": "squash",
        "monitor": "val/mAP",
        "crop_pct": 0.875,
    }
    assert "scale=(0.5, 1.0)" in resumed["pipeline"]["train"]
    assert json.loads((copy / "labels_mapping.json").read_text())["resize_mode"] == "squash"
    last = load_checkpoint(copy / "checkpoints" / "last.pt")
    assert last["args"]["monitor"] == "val/mAP" and len(last["state"]["history"]) == 3
    assert last["state"]["best"] is not None and "val/mAP" in last["state"]["best"]


def test_flags_given_on_the_command_line_win_over_the_task_defaults(
    run: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = ["--data", str(run["labels"]), "--out", str(out), "--epochs", "1", *FAST_CLI,
            *NO_OUTPUTS, "--crop-scale", "0.08", "--val-resize", "crop"]  # fmt: skip
    assert train.main(argv) == 0
    args = json.loads((out / "args.json").read_text())
    assert (args["crop_scale"], args["val_resize"], args["monitor"]) == (0.08, "crop", "val/mAP")
    assert (
        "scale=(0.08, 1.0)" in args["pipeline"]["train"] and "CenterCrop" in args["pipeline"]["val"]
    )
    assert json.loads((out / "labels_mapping.json").read_text())["resize_mode"] == "crop"


def test_a_jsonl_run_export_checked_on_a_csv_is_refused_not_misread(
    run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its CSV label column's separator is unknown to the run (JSONL has lists): once read as
    # single labels ("empty label" for an image with none), or a traceback.
    from tools import export

    rows = [json.loads(line) for line in run["labels"].read_text().splitlines()]
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"]] + [
            [str(run["labels"].parent / r["path"]), ";".join(r["label"]), r["split"]] for r in rows
        ])  # fmt: skip
    assert export.main([str(run["out"]), "--out", str(tmp_path / "m.onnx"), "--data", str(table)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot check the export on") and "separator" in err, err
    assert not (tmp_path / "m.onnx").exists()


def test_validation_images_without_any_label_are_warned_about_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # val/mAP is nan all run long, so no best.pt: said at start, not left to be found.
    labels = write_multilabel_set(tmp_path / "data", n_train=8, n_val=2)
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    for r in rows:
        if r["split"] == "val":
            r["label"] = []
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--data", str(labels), "--out", str(tmp_path / "run"), "--epochs", "1", *FAST_CLI,
            *NO_OUTPUTS]  # fmt: skip
    with caplog.at_level("WARNING", logger="trainer"):
        assert train.main(argv) == 0
    assert "no validation image of" in caplog.text and "best.pt is not written" in caplog.text
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
