"""tools/evaluate.py on a tree of class folders: the run's own split, or a clear refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch

from tests.conftest import make_tree
from tools import evaluate, export
from trainer.checkpoint import save_checkpoint
from trainer.data import ImageFolderData
from trainer.models import build_model

SPLIT = {"seed": 7, "val_fraction": 0.5}  # not the defaults (0, 0.2): a fresh split differs


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An (untrained) run on a tree of class folders, split with SPLIT, exported to ONNX."""
    base = tmp_path_factory.mktemp("evaluate_split")
    tree = make_tree(base / "tree", {"cat": 6, "dog": 6, "bird": 6}, splits=())
    torch.manual_seed(0)
    args = {"model": "small_cnn", "img_size": 16, "data": str(tree), **SPLIT}
    ckpt = {"model": build_model("small_cnn", 3).state_dict(), "classes": ["bird", "cat", "dog"],
            "args": args}  # fmt: skip
    best = save_checkpoint(ckpt, base / "run" / "checkpoints" / "best.pt")
    report = export.export_checkpoint(best, base / "run" / "model.onnx", num_images=4)
    return {"tree": tree, "best": best, "onnx": Path(report["path"])}


def _without_split(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose labels mapping does not record the split, as older exports."""
    proto = onnx.load(src)
    props = {p.key: p.value for p in proto.metadata_props}
    mapping = json.loads(props["labels_mapping"])
    assert mapping.pop("split") == SPLIT
    props["labels_mapping"] = json.dumps(mapping)
    onnx.helper.set_model_props(proto, props)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, dst)
    return dst


def _scored(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record the ImageFolderData objects tools/evaluate.py builds."""
    built: list[Any] = []

    def record(*args: Any, **kwargs: Any) -> ImageFolderData:
        built.append(ImageFolderData(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(evaluate, "ImageFolderData", record)
    return built


def _run_val(tree: Path) -> list[Any]:
    return ImageFolderData(tree, img_size=16, workers=0, verify=False, **SPLIT).val_samples


@pytest.mark.parametrize("where", ["checkpoint", "onnx-metadata", "args-json"])
def test_unsplit_tree_is_scored_on_the_runs_own_val_images(
    run: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    model = {"checkpoint": run["best"], "onnx-metadata": run["onnx"]}.get(where)
    if model is None:  # an older export in a run folder: args.json beside it says the split
        model = _without_split(run["onnx"], tmp_path / "run" / "model.onnx")
        (tmp_path / "run" / "args.json").write_text(json.dumps({"model": "small_cnn", **SPLIT}))
    built = _scored(monkeypatch)
    argv = [str(model), "--data", str(run["tree"]), "--out", str(tmp_path / "out")]
    assert evaluate.main([*argv, "--workers", "0"]) == 0
    result = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert result["split"] == "val" and result["n_images"] == 9  # half of 6 per class
    assert built[0].val_samples == _run_val(run["tree"])


def test_unknown_split_is_refused_or_given(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    model = _without_split(run["onnx"], tmp_path / "elsewhere" / "model.onnx")
    argv = [str(model), "--data", str(run["tree"]), "--workers", "0"]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(run["tree"]) in err and str(model) in err and "seed, val_fraction" in err
    assert "--seed and --val-fraction" in err
    built = _scored(monkeypatch)
    assert evaluate.main([*argv, "--seed", "7", "--val-fraction", "0.5"]) == 0
    assert built[0].val_samples == _run_val(run["tree"])
