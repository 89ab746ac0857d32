"""tools/train.py --data on a label file: a whole run (sampler, cache, reports, export, resume),
the keys of a JSONL export, --check-leakage, and bad rows as one-paragraph errors."""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_CLI, NO_OUTPUTS, make_tree
from tests.trainer.data.test_labelfile import tree_rows, write_labels
from tools import evaluate, export, train


@pytest.fixture(autouse=True)
def _unfreeze_gc() -> Iterator[None]:
    yield
    gc.unfreeze()  # tools/train.py freezes the collector: process-wide, undone for later tests


def test_a_run_on_a_csv_label_file(tmp_path: Path) -> None:
    images = make_tree(tmp_path / "images", splits=())
    shutil.copy(images / "cat" / "0.png", images / "dog" / "dup.png")  # a leak, once split
    rows = tree_rows(images, split=False)
    for row in rows:
        row["split"] = {"dog/dup.png": "val", "cat/0.png": "train"}.get(str(row["path"]), "")
    rows.append({"path": "cat/gone.png", "label": "cat", "split": ""})
    labels = write_labels(images / "labels.csv", rows)
    out = tmp_path / "run"
    argv = ["--data", str(labels), "--out", str(out), "--epochs", "1", *FAST_CLI,
            "--sampler", "balanced", "--cache", "ram", "--max-bad-fraction", "0.1",
            "--check-leakage", "--no-confusion-matrix", "--no-history-plots", "--no-samples",
            "--no-sampler-stats"]  # fmt: skip
    assert train.main(argv) == 0
    mapping = json.loads((out / "labels_mapping.json").read_text())
    assert mapping["class_to_idx"] == {"bird": 0, "cat": 1, "dog": 2}
    report = json.loads((out / "data_report.json").read_text())
    assert report["root"] == str(labels)
    assert [b["path"] for b in report["bad_files"]] == [str(images / "cat" / "gone.png")]
    assert "labels.csv:" in report["bad_files"][0]["reason"]
    (leak,) = report["leakage"]
    assert {f["path"] for f in leak["files"]} >= {
        str(images / "cat" / "0.png"), str(images / "dog" / "dup.png")
    }  # fmt: skip
    for name in ("metrics.csv", "report.html", "model.onnx", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert "leakage check: 1 image(s) in more than one split" in page
    assert f"val: {images / 'dog' / 'dup.png'}" in page
    assert json.loads((out / "export_report.json").read_text())["verified_on"] == "val"
    # Resume replays the label file; one whose labels changed is refused, the folder untouched.
    assert train.main(["--resume", str(out), "--epochs", "2"]) == 0
    before = (out / "metrics.csv").read_bytes()
    write_labels(labels, [{**r, "label": "kitten" if r["label"] == "cat" else r["label"]}
                          for r in rows])  # fmt: skip
    assert train.main(["--resume", str(out), "--epochs", "3"]) == 2
    assert (out / "metrics.csv").read_bytes() == before


def test_jsonl_keys_are_recorded_and_replayed(tmp_path: Path) -> None:
    images = make_tree(tmp_path / "images", {"a": 4, "b": 4}, splits=("train", "val"))
    rows = [{"image": r["path"], "choice": r["label"], "split": r["split"]}
            for r in tree_rows(images)]  # fmt: skip
    labels = write_labels(images / "export.jsonl", rows)
    out = tmp_path / "run"
    argv = ["--data", str(labels), "--image-key", "image", "--label-key", "choice",
            "--out", str(out), "--epochs", "1", *FAST_CLI, *NO_OUTPUTS]  # fmt: skip
    assert train.main(argv) == 0
    args = json.loads((out / "args.json").read_text())
    assert (args["image_key"], args["label_key"], args["check_leakage"]) == ("image", "choice", False)
    assert train.main(["--resume", str(out), "--epochs", "2"]) == 0
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["classes"] == ["a", "b"] and len(ckpt["state"]["history"]) == 2
    # tools/export.py verifies on the run's val images, read with the run's keys.
    assert export.main([str(out / "checkpoints" / "last.pt"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert json.loads((tmp_path / "export_report.json").read_text())["verified_on"] == "val"
    # tools/evaluate.py reads it with the keys in the checkpoint's args too.
    assert evaluate.main([str(out / "checkpoints" / "last.pt"), "--data", str(labels),
                          "--out", str(tmp_path / "eval")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["n_images"] == 8


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("l.csv", "path,label\na.png,\n", "l.csv:2: empty label"),
        ("l.jsonl", '{"path": "a.png"\n', "l.jsonl:1: not valid JSON"),
        ("l.jsonl", '{"file": "a.png", "label": "x"}\n', "l.jsonl:1: no key 'path'; the object has 'file'"),
    ],
)  # fmt: skip
def test_bad_label_files_exit_2_with_file_and_line(
    tmp_path: Path, name: str, text: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / name
    labels.write_text(text)
    out = tmp_path / "run"
    assert train.main(["--data", str(labels), "--out", str(out), *FAST_CLI]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not out.exists()
