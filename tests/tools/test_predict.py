"""tools/predict.py: folders/globs, CSV/JSON output, parity with PyTorch, user errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.trainer.data.malformed import damage, good_bytes
from tools import predict
from trainer import onnx_classifier
from trainer.data import eval_preprocess, load_image
from trainer.data.transforms import EvalResize
from trainer.export import OnnxModelError, export_onnx

IMG = 16
CLASSES = ["bird", "cat", "dog"]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "predict.py"




def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, len(CLASSES)),
    ).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("predict")
    model = tiny_model()
    mapping = {
        "class_to_idx": {c: i for i, c in enumerate(CLASSES)},
        "idx_to_class": {str(i): c for i, c in enumerate(CLASSES)},
        "image_size": IMG,
        "resize_size": int(IMG / 0.875),
        "normalization": {"mean": MEAN, "std": STD},
        "interpolation": "bilinear",
    }
    onnx_path = export_onnx(model, root / "model" / "model.onnx", labels_mapping=mapping)
    rng = np.random.default_rng(0)
    photos = root / "photos"
    (photos / "nested").mkdir(parents=True)
    # Odd sizes and aspect ratios, so resize + centre crop really do something.
    for name, (w, h) in {"a.png": (20, 30), "b.png": (40, 18), "nested/c.png": (17, 17)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / name)
    (photos / "notes.txt").write_text("not an image")
    return {"model": model, "onnx": onnx_path, "photos": photos}


def torch_probs(model: nn.Module, path: Path) -> np.ndarray:
    img = eval_preprocess(load_image(path), IMG).float() / 255.0
    x = (img - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.no_grad():
        return torch.softmax(model(x[None]), dim=1)[0].numpy()


def test_predict_paths_matches_pytorch(setup: dict[str, Any]) -> None:
    rows = predict.predict_paths(setup["onnx"], [setup["photos"]], top_k=2, batch_size=2)
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png", "c.png"]
    for row in rows:
        expected = torch_probs(setup["model"], Path(row["path"]))
        assert row["label"] == CLASSES[int(expected.argmax())]
        assert row["prob"] == pytest.approx(float(expected.max()), abs=1e-5)
        assert len(row["topk"]) == 2
        assert row["topk"][0] == {"label": row["label"], "prob": row["prob"]}
        assert row["topk"][0]["prob"] >= row["topk"][1]["prob"]


def test_csv_output(setup: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    assert (
        predict.main(
            [
                "--model",
                str(setup["onnx"]),
                str(setup["photos"]),
                "--output",
                str(out),
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        assert row["label"] in CLASSES
        pairs = [item.split(":") for item in row["topk"].split(";")]
        assert pairs[0][0] == row["label"]
        assert sum(float(p) for _, p in pairs) == pytest.approx(1.0, abs=1e-3)


def test_json_output_with_glob(setup: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "preds.json"
    pattern = str(setup["photos"] / "**" / "*.png")
    assert predict.main(["--model", str(setup["onnx"]), pattern, "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert sorted(Path(r["path"]).name for r in rows) == ["a.png", "b.png", "c.png"]
    for row in rows:
        assert len(row["topk"]) == len(CLASSES)  # --top-k 5 capped at the class count
        assert sum(t["prob"] for t in row["topk"]) == pytest.approx(1.0, abs=1e-5)


def test_jsonl_output_one_object_per_image(setup: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    argv = ["--model", str(setup["onnx"]), str(setup["photos"]), "--top-k", "2", "--output", str(out)]
    assert predict.main(argv) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png", "c.png"]
    for row in rows:
        assert set(row) == {"path", "label", "prob", "topk"}
        expected = torch_probs(setup["model"], Path(row["path"]))
        assert [t["label"] for t in row["topk"]] == [CLASSES[i] for i in expected.argsort()[::-1][:2]]
        assert row["topk"][0]["prob"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_table_when_no_output(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert predict.main(["--model", str(setup["onnx"]), str(setup["photos"] / "a.png")]) == 0
    assert "a.png" in capsys.readouterr().out


def test_unreadable_file_is_skipped(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "preds.json"
    code = predict.main(
        [
            "--model",
            str(setup["onnx"]),
            str(broken),
            str(setup["photos"] / "a.png"),
            "--output",
            str(out),
        ]
    )
    assert code == 0
    assert "broken.png" in capsys.readouterr().err
    rows = json.loads(out.read_text())
    assert [Path(r["path"]).name for r in rows] == ["broken.png", "a.png"]
    assert rows[0]["label"] is None and rows[0]["topk"] == []
    assert rows[0]["skipped"].startswith("cannot decode")
    assert rows[1]["label"] in CLASSES and "skipped" not in rows[1]


# Engine.predict, OnnxClassifier.predict_batch and tools/predict.py (run as a script, as
# ``python tools/predict.py`` runs it) on the same two files, in one child process: a native
# decoder's segfault shows as its exit status instead of ending pytest.
_BAD_PNG_CHILD = """
import json, runpy, sys
from tests.conftest import StandInData, make_engine
from trainer import OnnxClassifier
model, bad, good, out, script = sys.argv[1:]
probs = make_engine(data=StandInData()).predict([bad, good], batch_size=2)
print("ENGINE", json.dumps(probs.isnan().any(1).tolist()))
rows = OnnxClassifier(model).predict_batch([bad, good], top_k=1)
print("BATCH", json.dumps([len(r) for r in rows]), flush=True)
sys.argv = [script, "--model", model, bad, good, "--output", out]
runpy.run_path(script, run_name="__main__")
"""


def test_a_png_with_corrupt_pixel_data_is_named_and_skipped(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    """Issue 24: torchvision's native PNG decoder segfaults on this file; inference decodes
    with Pillow, which raises, so the file is named and skipped and the rest is predicted."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(damage("png", "corrupt_data", good_bytes("png")))  # IDAT bytes flipped
    good, out = setup["photos"] / "a.png", tmp_path / "preds.csv"
    argv = [str(setup["onnx"]), str(bad), str(good), str(out), str(SCRIPT)]
    proc = subprocess.run(
        [sys.executable, "-c", _BAD_PNG_CHILD, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=SCRIPT.parents[1],
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "ENGINE [true, false]" in proc.stdout  # the bad row NaN, the good one predicted
    assert "BATCH [0, 1]" in proc.stdout
    assert proc.stderr.count("bad.png") >= 3  # the engine, the classifier and the tool name it
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["bad.png", "a.png"]
    assert rows[0]["label"] == "" and rows[0]["skipped"].startswith("cannot decode")
    assert rows[1]["label"] in CLASSES and rows[1]["skipped"] == ""


@pytest.mark.parametrize("case", ["missing_model", "not_onnx", "no_images", "bad_output"])
def test_user_errors_exit_2_without_traceback(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    model, paths, extra = str(setup["onnx"]), [str(setup["photos"])], []
    if case == "missing_model":
        model = str(tmp_path / "nope.onnx")
    elif case == "not_onnx":
        model = str(tmp_path / "fake.onnx")
        Path(model).write_text("hello")
    elif case == "no_images":
        (tmp_path / "empty").mkdir()
        paths = [str(tmp_path / "empty"), str(tmp_path / "*.jpg")]
    else:
        extra = ["--output", str(tmp_path / "preds.xlsx")]
    assert predict.main(["--model", model, *paths, *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    expected = {
        "missing_model": "nope.onnx",
        "not_onnx": "fake.onnx",
        "no_images": "empty",
        "bad_output": "preds.xlsx",
    }[case]
    assert expected in err


def _relabelled(src: Path, dst: Path, **changes: Any) -> Path:
    """A copy of the ONNX model at ``src`` whose embedded labels mapping has ``changes``."""
    import onnx

    proto = onnx.load(src)
    props = {p.key: p.value for p in proto.metadata_props}
    mapping = {**json.loads(props["labels_mapping"]), **changes}
    props["labels_mapping"] = json.dumps(mapping)
    onnx.helper.set_model_props(proto, props)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, dst)
    return dst


def test_folder_walk_enters_each_folder_once_through_link_loops(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.new("RGB", (8, 8)).save(photos / name)
    # A loop back to the top. (One only: with two, a walk that follows loops branches at each
    # level and would not end before the kernel's 40-link limit, 2**40 folders later.)
    os.symlink(photos, photos / "sub" / "up")
    images = predict.collect_images([photos, photos / "sub"])
    assert [p.relative_to(photos).as_posix() for p in images] == ["a.png", "sub/b.png"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"idx_to_class": {"0": "a", "1": "b", "2": "c", "3": "d"},
             "class_to_idx": {"a": 0, "b": 1, "c": 2, "d": 3}, "num_classes": 4},
            "outputs 3 scores per image, but its labels mapping names 4 classes",
        ),
        ({"image_size": 24}, f"takes {IMG}x{IMG} images, but its labels mapping says image_size 24"),
    ],
    ids=["classes", "image-size"],
)  # fmt: skip
def test_model_that_does_not_match_its_mapping_exits_2(
    setup: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    expected: str,
) -> None:
    model = _relabelled(setup["onnx"], tmp_path / "odd.onnx", **changes)
    out = tmp_path / "preds.csv"
    argv = ["--model", str(model), str(setup["photos"]), "--output", str(out)]
    assert predict.main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and str(model) in err and "tools/export.py" in err
    assert "Traceback" not in err and not out.exists()


def test_output_count_is_checked_when_the_graph_leaves_it_symbolic(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {"idx_to_class": {str(i): c for i, c in enumerate("abcd")}, "class_to_idx": None,
             "num_classes": 4}  # fmt: skip
    model = _relabelled(setup["onnx"], tmp_path / "odd.onnx", **names)
    # As if the graph's output had no static size: only the first batch's logits can tell.
    monkeypatch.setattr(onnx_classifier, "check_onnx_signature", lambda *args: None)
    with pytest.raises(OnnxModelError, match="outputs 3 scores per image, but .* 4 classes"):
        predict.predict_paths(model, [setup["photos"]])


def test_output_file_is_written_before_the_table(
    setup: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "preds.json"
    existed: list[bool] = []

    def table(rows: Any) -> None:
        existed.append(out.is_file())
        raise BrokenPipeError  # the terminal went away while printing

    monkeypatch.setattr(predict, "print_table", table)
    with pytest.raises(BrokenPipeError):
        predict.main(["--model", str(setup["onnx"]), str(setup["photos"]), "--output", str(out)])
    assert existed == [True]
    assert len(json.loads(out.read_text())) == 3


def test_brackets_in_names_and_paths_print_literally(
    setup: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = ["[red]", "[bold]x", "[/]"]
    model = _relabelled(
        setup["onnx"],
        tmp_path / "brackets.onnx",
        idx_to_class={str(i): c for i, c in enumerate(names)},
        class_to_idx={c: i for i, c in enumerate(names)},
    )
    (tmp_path / "a[").mkdir()
    image = tmp_path / "a[" / "]b[red].png"  # the path reads ".../a[/]b[red].png"
    Image.new("RGB", (8, 8)).save(image)
    monkeypatch.setenv("COLUMNS", "400")  # one line per row, so the names are not folded
    assert predict.main(["--model", str(model), str(image), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert str(image) in out
    for name in names:
        assert name in out


def test_tta_flip_and_the_mappings_resize_mode(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _relabelled(setup["onnx"], tmp_path / "squash.onnx", resize_mode="squash",
                        crop_pct=1.0, resize_size=IMG)  # fmt: skip
    out = tmp_path / "preds.json"
    argv = ["--model", str(model), str(setup["photos"]), "--tta", "flip", "--output", str(out)]
    assert predict.main(argv) == 0
    squash = EvalResize(IMG, 1.0, "squash")
    for row in json.loads(out.read_text()):
        img = eval_preprocess(load_image(Path(row["path"])), squash).float() / 255.0
        x = (img - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        with torch.no_grad():
            probs = setup["model"](torch.stack([x, x.flip(-1)])).softmax(1).mean(0)
        assert row["prob"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert row["label"] == CLASSES[int(probs.argmax())]
    with pytest.raises(SystemExit):
        predict.main(["--model", str(model), str(setup["photos"]), "--tta", "both"])
    assert "invalid choice: 'both'" in capsys.readouterr().err
    # A resize mode this version does not know: refused, not guessed.
    odd = _relabelled(setup["onnx"], tmp_path / "odd.onnx", resize_mode="letterbox")
    assert predict.main(["--model", str(odd), str(setup["photos"])]) == 2
    assert "resize_mode 'letterbox'" in capsys.readouterr().err
