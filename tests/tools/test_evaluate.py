"""tools/evaluate.py: .pt and .onnx agree, JSON/PNG outputs, split choice, class checks, errors."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from tests.conftest import console_text, make_tree, quiet_console
from tests.tools.tiny_run import train_tiny_run
from tools import evaluate, export
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data import ImageFolderData
from trainer.engine import Engine
from trainer.models import build_model
from trainer.restore import model_from_checkpoint

KEYS = {
    "model",
    "format",
    "weights",
    "data",
    "split",
    "n_images",
    "num_classes",
    "classes",
    "top1",
    "top5",
    "macro",
    "per_class",
    "confusion_matrix",
    "metrics",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained tiny run (train/val/test tree) and its best.pt exported to ONNX once."""
    out = train_tiny_run(tmp_path_factory.mktemp("evaluate"))
    best = out / "checkpoints" / "best.pt"
    report = export.export_checkpoint(best, out / "model.onnx", num_images=8)
    return {"tree": out.parent / "tree", "best": best, "onnx": Path(report["path"])}


def _eval(model: Path, tree: Path, out: Path, *extra: str) -> dict[str, Any]:
    args = [str(model), "--data", str(tree), "--out", str(out), "--workers", "0", *extra]
    assert evaluate.main(args) == 0
    assert (out / "confusion_matrix.png").stat().st_size > 0
    with Image.open(out / "confusion_matrix.png") as img:
        assert img.format == "PNG"
    return json.loads((out / "evaluation.json").read_text())


def test_checkpoint_and_onnx_agree(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pt = _eval(run["best"], run["tree"], tmp_path / "pt")
    assert "macro avg" in capsys.readouterr().out  # the table
    onnx = _eval(run["onnx"], run["tree"], tmp_path / "onnx")
    for result, fmt in ((pt, "pytorch"), (onnx, "onnx")):
        assert set(result) == KEYS
        assert result["format"] == fmt
        assert result["split"] == "test"  # the tree has one, so it is the default
        assert result["classes"] == ["bird", "cat", "dog"]
        assert result["n_images"] == 15 and result["top5"] is None  # 3 classes: no top-5
        pc = result["per_class"]
        assert {len(v) for v in pc.values()} == {3}
        assert pc["support"] == [4, 6, 5]
        cm = torch.tensor(result["confusion_matrix"])
        assert result["top1"] == pytest.approx(float(cm.diag().sum() / cm.sum()))
    assert pt["weights"] == "ema"
    # The same (EMA) weights through two runtimes: same predictions.
    assert onnx["confusion_matrix"] == pt["confusion_matrix"]
    assert onnx["top1"] == pytest.approx(pt["top1"])


def test_a_checkpoint_scores_what_the_engine_scores(run: dict[str, Path]) -> None:
    """One metrics implementation: evaluate.py on best.pt gives the engine's own test numbers
    (same counts; float sums to rounding), under the engine's names."""
    model, _ = model_from_checkpoint(load_checkpoint(run["best"]), run["best"])
    data = ImageFolderData(run["tree"], img_size=16, batch_size=4, workers=0)
    engine = Engine(model, data, device="cpu", sanity_steps=0)
    expected = {k: v for k, v in engine.test().items() if not k.endswith(("/loss", "/time"))}
    result = evaluate.evaluate(run["best"], run["tree"], split="test", workers=0)
    assert set(result["metrics"]) == set(expected) == {
        "test/acc", "test/macro_f1", "test/balanced_acc", "test/ece"
    }  # fmt: skip
    for key, value in expected.items():
        assert result["metrics"][key] == pytest.approx(value, abs=1e-6), key
    assert result["top1"] == expected["test/acc"]
    assert engine.state.confusion_matrix is not None
    assert result["confusion_matrix"] == engine.state.confusion_matrix.tolist()
    recall = dict(zip(result["classes"], result["per_class"]["recall"], strict=True))
    assert recall == pytest.approx(engine.state.per_class_acc)


def test_val_split_and_default_out(run: dict[str, Path], tmp_path: Path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(run["onnx"].read_bytes())
    argv = [str(onnx), "--data", str(run["tree"]), "--split", "val", "--workers", "0"]
    assert evaluate.main(argv) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["split"] == "val" and result["n_images"] == 15
    assert (tmp_path / "confusion_matrix.png").is_file()


def test_top5_and_per_class_with_five_classes(tmp_path: Path) -> None:
    classes = ["a", "b", "c", "d", "e"]
    tree = make_tree(tmp_path / "tree", dict.fromkeys(classes, 2), splits=("train", "val"))
    torch.manual_seed(0)
    ckpt = {
        "model": build_model("small_cnn", 5).state_dict(),
        "classes": classes,
        "args": {"model": "small_cnn", "img_size": 16},
    }
    path = save_checkpoint(ckpt, tmp_path / "untrained.pt")
    result = _eval(path, tree, tmp_path / "out")
    assert result["split"] == "val"  # no test/ in this tree
    assert result["top5"] == pytest.approx(1.0)  # 5 classes: the true one is always in the top 5
    assert result["weights"] == "model"
    assert all(len(v) == 5 for v in result["per_class"].values())


def test_class_mismatch_names_the_difference(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "other", {"cat": 2, "dog": 2, "fish": 2})
    code = evaluate.main([str(run["onnx"]), "--data", str(tree), "--workers", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "only in the model: ['bird']" in err and "only in the data: ['fish']" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("model", "extra", "expected"),
    [
        ("missing.pt", [], "does not exist"),
        ("missing.onnx", [], "not found"),
        ("best", ["--split", "test", "--data", "NO_TEST"], "no test images"),
        ("best", ["--data", "MISSING_DATA"], "does not exist"),
        ("best", ["--label-sep", ";"], "is a single-label model. Drop --label-sep"),
        ("best", ["--data", "EMPTY_DATA"], "holds no folders"),  # said once, and only that
    ],
    ids=[
        "missing-checkpoint",
        "missing-onnx",
        "no-test-split",
        "missing-data",
        "label-sep",
        "empty-data",
    ],
)
def test_user_mistakes_exit_2(
    run: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    model: str,
    extra: list[str],
    expected: str,
) -> None:
    caplog.set_level("INFO")
    model_path = run["best"] if model == "best" else tmp_path / model
    no_test = make_tree(tmp_path / "no_test", splits=("train", "val"))
    (tmp_path / "empty").mkdir()
    data = {"NO_TEST": str(no_test), "MISSING_DATA": str(tmp_path / "nowhere"),
            "EMPTY_DATA": str(tmp_path / "empty")}  # fmt: skip
    extra = [data.get(x, x) for x in extra]
    if "--data" not in extra:
        extra += ["--data", str(run["tree"])]
    assert evaluate.main([str(model_path), *extra, "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "class folders only" not in caplog.text  # no tree here is one


def test_report_prints_brackets_literally() -> None:
    classes = ["[red]", "[/]", "a[b]c"]
    result = {
        "model": "/runs/m[bold]/model[red].onnx",
        "split": "val",
        "n_images": 3,
        "top1": 1.0,
        "top5": None,
        "classes": classes,
        "per_class": {k: [1.0] * 3 for k in ("precision", "recall", "f1")} | {"support": [1] * 3},
        "macro": {"precision": 1.0, "recall": 1.0, "f1": 1.0},
    }
    console = Console(file=io.StringIO(), width=200)
    evaluate.print_report(result, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "model[red].onnx on val" in text
    for name in classes:
        assert f" {name} " in text


def test_a_thousand_classes_print_the_worst_and_best_only(tmp_path: Path) -> None:
    n = 1000
    f1 = [0.5] * n
    f1[321], f1[654] = 0.0, 1.0
    result = {
        "model": "m.onnx", "split": "val", "n_images": 2 * n, "top1": 0.5, "top5": 0.9,
        "classes": [f"class{i}" for i in range(n)],
        "per_class": {"precision": f1, "recall": f1, "f1": f1, "support": [2] * n},
        "macro": {"precision": 0.5, "recall": 0.5, "f1": 0.5},
    }  # fmt: skip
    console = quiet_console()
    evaluate.print_report(result, console)
    text = console_text(console)
    names = re.findall(r"class\d+", text)
    assert len(names) == 30 and names[0] == "class321" and names[-1] == "class654"
    assert len(text.splitlines()) <= 45 and "macro avg" in text
    assert "970 more classes in evaluation.json" in " ".join(text.split())


def _linear_onnx(path: Path, mapping: dict[str, Any]) -> Path:
    """A seeded linear classifier of 16x16 images as an ONNX file (built directly: no export
    needed), with ``mapping`` in its metadata. Nothing pools, so a mirror changes its output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(0, 0.05, (3 * 16 * 16, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"labels_mapping": json.dumps(mapping)})
    onnx.save(model, path)
    return path


def test_tta_reports_both_figures_and_the_mappings_resize_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.nn import functional as F

    from trainer import OnnxClassifier
    from trainer.metrics import EvalScore
    from trainer.state import EngineState

    tree = make_tree(tmp_path / "tree", {"bird": 3, "cat": 3, "dog": 2}, size=(24, 16),
                     splits=("train", "val", "test"))  # fmt: skip
    data = ImageFolderData(tree, img_size=16, crop_pct=1.0, workers=0)
    model = _linear_onnx(tmp_path / "model.onnx", data.labels_mapping())
    built: list[dict[str, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> ImageFolderData:
        built.append(kwargs)
        return ImageFolderData(*args, **kwargs)

    monkeypatch.setattr(evaluate, "ImageFolderData", spy)
    result = _eval(model, tree, tmp_path / "out", "--tta", "flip")
    assert (built[0]["img_size"], built[0]["crop_pct"], built[0]["val_resize"]) == (16, 1.0, "crop")
    assert set(result) == KEYS | {"tta", "without_tta"} and result["tta"] == "flip"
    # OnnxClassifier's probabilities, with and without TTA, on the same images, scored by the
    # engine's scorer, give the same numbers (ECE and all).
    paths, targets = data.test_samples.paths(), torch.from_numpy(data.test_samples.targets)
    for tta, metrics in (("flip", result["metrics"]), ("none", result["without_tta"]["metrics"])):
        clf = OnnxClassifier(model, tta=tta)
        probs = torch.from_numpy(clf.probabilities(np.stack([clf.preprocess(p) for p in paths])))
        scorer = EvalScore(EngineState(), "test", data.classes, F.cross_entropy, torch.device("cpu"))
        scorer.score(probs.float().log(), (targets, targets))
        scorer.end()
        assert metrics == pytest.approx({k: scorer.metrics[k] for k in metrics}, abs=1e-6)
    # The mirror moves the ECE well beyond that tolerance: the check tells the two apart.
    assert abs(result["metrics"]["test/ece"] - result["without_tta"]["metrics"]["test/ece"]) > 1e-3
    out = capsys.readouterr().out
    assert "with --tta flip; without: top-1" in re.sub(r"\s+", " ", out)
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(model), "--data", str(tree), "--tta", "flop"])
    assert e.value.code == 2
