"""tools/export.py: checkpoint -> verified ONNX, random fallback, and its exit statuses."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from tests.conftest import make_tree
from tests.tools.tiny_run import train_tiny_run
from tools import benchmark
from tools import export as tool
from trainer import export, export_check
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data import ImageFolderData
from trainer.export import read_onnx_metadata
from trainer.models import build_model
from trainer.onnx_classifier import OnnxClassifier
from trainer.restore import model_from_checkpoint, normalize

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


@pytest.mark.parametrize("spelling", ["existing", "trailing-slash"])
def test_out_naming_a_folder_writes_model_onnx_in_it(
    run: Path, tmp_path: Path, spelling: str
) -> None:
    folder = tmp_path / "deploy"
    if spelling == "existing":
        folder.mkdir()
    out = str(folder) + ("/" if spelling == "trailing-slash" else "")
    assert tool.main([str(run), "--out", out, "--num-images", "4"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["export_report.json", "model.onnx"]


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
        # Other classes: their labels would index the model's wrongly (accuracy 0, rc 0).
        (lambda tmp, run: [str(run), "--data", str(_zoo(tmp))], "other classes"),
        (lambda tmp, run: [str(run), "--opset", "12"], "--opset"),
        (lambda tmp, run: [str(run), "--formats", "onnx,tflite"], "onnx-int8, openvino"),
        (lambda tmp, run: [str(run), "--calib-images", "0"], "--calib-images"),
        # No validation images to check an INT8 model on: refused, not checked on noise.
        (lambda tmp, run: [str(_moved(tmp, run)), "--formats", "onnx-int8"], "--data DIR"),
    ],
    ids=[
        "missing",
        "not-a-checkpoint",
        "no-architecture",
        "bad-data",
        "other-classes",
        "old-opset",
        "unknown-format",
        "no-calibration-images",
        "no-val-images",
    ],
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


def _moved(tmp_path: Path, run: Path) -> Path:
    """best.pt copied away from its data, which is gone."""
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    ckpt["args"]["data"] = str(tmp_path / "gone")
    return save_checkpoint(ckpt, tmp_path / "moved.pt")


def _zoo(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "zoo", {"ant": 3, "bee": 3, "cat": 3}, size=(16, 16))


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


ALL_FORMATS = ("onnx", "onnx-fp16", "onnx-int8", "openvino")


@pytest.fixture(scope="module")
def exported(run: Path) -> Path:
    """Every format of the tiny run, in the run folder: its model.onnx.

    The 2-epoch model scores its val images with top-2 margins down to 0.01, which INT8
    rounding may flip: one flip in 15 images is under its bar. The bars themselves are
    tests/trainer/test_export_formats.py's; here they are loose, so this does not flake.
    """
    argv = [str(run), "--formats", ",".join(ALL_FORMATS), "--calib-images", "64"]
    loose = export_check.Bar(min_agreement=0.8, max_accuracy_drop=0.2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(export_check.BARS, "onnx-int8", loose)
        mp.setitem(export_check.BARS, "onnx-fp16", loose)
        assert tool.main(argv) == 0
    return run / "model.onnx"


def test_every_format_is_written_checked_and_carries_the_labels_mapping(exported: Path) -> None:
    run = exported.parent
    report = json.loads((run / "export_report.json").read_text())
    entries = report["formats"]
    assert list(entries) == list(ALL_FORMATS)
    paths = {f: Path(e["path"]) for f, e in entries.items()}
    assert paths == {
        "onnx": exported,
        "onnx-fp16": run / "model.fp16.onnx",
        "onnx-int8": run / "model.int8.onnx",
        "openvino": run / "openvino" / "model.xml",
    }
    # Readable as the run's other files are (the umask's modes), for the service deploying them.
    umask = os.umask(0o022)
    os.umask(umask)
    for path in [*paths.values(), run / "openvino"]:
        wanted = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == wanted, path
    for fmt, entry in entries.items():
        assert entry["passed"] and entry["n_images"] == 15 and entry["verified_on"] == "val", fmt
        assert entry["top1_agreement"] >= 0.8 and 0 <= entry["accuracy"] <= 1
        assert entry["torch_accuracy"] == entries["onnx"]["torch_accuracy"]
        assert (entry["max_abs_diff"] is None) == (fmt == "onnx-int8")
        assert entry["size_bytes"] > 0 and paths[fmt].is_file()
    assert (run / "openvino" / "model.bin").is_file()
    # The issue's size target: INT8 weights are a quarter of fp32's, plus the graph.
    assert entries["onnx-int8"]["size_bytes"] <= 0.35 * entries["onnx"]["size_bytes"]
    assert entries["onnx-fp16"]["size_bytes"] <= 0.6 * entries["onnx"]["size_bytes"]
    assert not list(run.glob("*FAILED*")) and not list(run.glob(".*"))  # no leftovers

    # One labels mapping for all: in each ONNX file, in the IR and beside it.
    mapping = read_onnx_metadata(exported)
    for fmt in ("onnx-fp16", "onnx-int8"):
        assert read_onnx_metadata(paths[fmt]) == mapping
    ov_mapping = json.loads((run / "openvino" / "labels_mapping.json").read_text())
    assert ov_mapping == mapping


def test_each_format_classifies_like_pytorch_in_its_own_runtime(exported: Path, run: Path) -> None:
    import openvino as ov

    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    model = build_model("small_cnn", 3).eval()
    model.load_state_dict(ckpt["ema"]["module"])
    data = ImageFolderData(run.parent / "tree", img_size=16, batch_size=15, workers=0)
    images = normalize(next(iter(data.val_loader()))[0], data.mean, data.std)
    with torch.no_grad():
        expected = model(images).numpy()
    xml = exported.parent / "openvino" / "model.xml"
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = {"openvino": compiled(images.numpy())[compiled.output(0)]}
    rt_info = ov.Core().read_model(str(xml)).get_rt_info(["labels_mapping"]).astype(str)
    assert json.loads(rt_info) == read_onnx_metadata(exported)
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(exported.parent / name))
        (got[name],) = session.run(None, {"input": images.numpy()})
    np.testing.assert_allclose(got["openvino"], expected, atol=1e-4)
    np.testing.assert_allclose(got["model.fp16.onnx"], expected, atol=0.05)
    # INT8 (calibrated on the 15 training images) is as far from PyTorch as the report says.
    report = json.loads((exported.parent / "export_report.json").read_text())
    agreement = (got["model.int8.onnx"].argmax(1) == expected.argmax(1)).mean()
    assert agreement == pytest.approx(report["formats"]["onnx-int8"]["top1_agreement"])


def test_a_format_below_its_bar_is_kept_as_failed_and_named(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    monkeypatch.setitem(export_check.BARS, "onnx-int8", export_check.Bar(min_agreement=1.01))
    argv = [str(run), "--out", str(out), "--formats", "onnx-fp16,onnx-int8", "--calib-images", "3"]
    assert tool.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 1 format(s) failed") and "onnx-int8 (top-1 agreement" in err
    assert str(tmp_path / "model.int8.FAILED.onnx") in err and "onnx-fp16" not in err
    assert (tmp_path / "model.int8.FAILED.onnx").is_file()
    assert not (tmp_path / "model.int8.onnx").exists() and (tmp_path / "model.fp16.onnx").is_file()
    entry = json.loads((tmp_path / "export_report.json").read_text())["formats"]["onnx-int8"]
    assert entry["passed"] is False and entry["path"].endswith("model.int8.FAILED.onnx")
    # The benchmark finds it under that name, and says so.
    argv = [str(tmp_path), "--runs", "1", "--batches", "1", "--num-images", "4"]
    assert benchmark.main(argv) == 0
    rows = json.loads((tmp_path / "benchmark.json").read_text())["rows"]
    assert [(r["format"], r["failed"]) for r in rows] == [
        ("pytorch", False), ("onnx", False), ("onnx-fp16", False), ("onnx-int8", True)
    ]  # fmt: skip

    # Once it passes, it takes its name and the failed one goes (a loose bar: see `exported`).
    loose = export_check.Bar(min_agreement=0.5)
    monkeypatch.setitem(export_check.BARS, "onnx-int8", loose)
    model, _ = model_from_checkpoint(load_checkpoint(run / "checkpoints" / "best.pt"), run)
    clf = OnnxClassifier(out)
    data = ImageFolderData(run.parent / "tree", img_size=16, batch_size=8, workers=0)
    images, labels = export_check.sample_images(clf, data.val_samples, 8)
    export_check.export_formats(
        out, model, ["onnx-int8"], images=images, labels=labels, calibration=images
    )
    assert (tmp_path / "model.int8.onnx").is_file()
    assert not (tmp_path / "model.int8.FAILED.onnx").exists()


def test_openvino_without_its_package_names_the_install_command(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    out = tmp_path / "model.onnx"
    assert tool.main([str(run), "--out", str(out), "--formats", "openvino"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and 'pip install "imgtrainer[openvino]"' in err
    assert len(err.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def _doc_blocks() -> list[str]:
    """docs/deployment.md's Python blocks, in order: preprocessing, ONNX Runtime, OpenVINO."""
    text = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_deployment_snippets_need_only_their_runtime(exported: Path) -> None:
    """docs/deployment.md's loaders, run as a script on the exported formats: each gives what
    the model gives, on the trainer's own preprocessing, without importing torch or trainer."""
    run = exported.parent
    (run / "labels_mapping.json").write_text(
        json.dumps(read_onnx_metadata(exported)), encoding="utf-8"
    )  # a tools/train.py run has it; the tiny run of these tests does not
    photo = run.parent / "tree" / "val" / "cat" / "0.png"
    prep, onnx_block, openvino_block = (
        b.replace("runs/demo/", f"{run}/").replace('"photo.jpg"', repr(str(photo)))
        for b in _doc_blocks()
    )
    script = [prep, "results = {}"]
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        assert "model.int8.onnx" in onnx_block  # what this test swaps
        script += [onnx_block.replace("model.int8.onnx", name), f"results[{name!r}] = probs"]
    script += [openvino_block, "results['openvino'] = probs"]
    # Files the trainer decodes with care: transparency over white, 16-bit scaled to 8 bits.
    rng = np.random.default_rng(0)
    odd = {"rgba": run.parent / "rgba.png", "gray16": run.parent / "gray16.png",
           "palette": run.parent / "palette.png"}  # fmt: skip
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA").save(odd["rgba"])
    Image.fromarray(rng.integers(0, 65536, (40, 30), dtype=np.uint16)).save(odd["gray16"])
    pal = Image.fromarray(rng.integers(0, 8, (40, 30), dtype=np.uint8), "P")
    pal.putpalette([v for i in range(8) for v in (30 * i, 200 - 20 * i, 90)])
    pal.save(odd["palette"], transparency=3)
    script += [f"results[{k!r}] = preprocess({str(p)!r})" for k, p in odd.items()]
    script += [
        f"results['x'] = preprocess({str(photo)!r})",
        "import sys",
        "assert not {'torch', 'trainer'} & set(sys.modules), 'a snippet imported the trainer'",
        "print(json.dumps({k: v.tolist() for k, v in results.items()}))",
    ]
    path = run.parent / "deploy.py"
    path.write_text("\n".join(script))
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {k: np.asarray(v) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}

    # The snippet's preprocessing is the trainer's, up to a grey level of resampling.
    clf = OnnxClassifier(exported)
    np.testing.assert_allclose(got["x"], clf.preprocess(photo)[None], atol=3 / 255 / 0.224)
    for key, path in odd.items():
        np.testing.assert_allclose(got[key], clf.preprocess(path)[None], atol=3 / 255 / 0.224,
                                   err_msg=key)  # fmt: skip
    # Each runtime computes its model's probabilities on that input.
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        expected = OnnxClassifier(run / name).probabilities(got["x"])[0]
        np.testing.assert_allclose(got[name], expected, atol=1e-5)
    expected = clf.probabilities(got["x"])[0]
    np.testing.assert_allclose(got["openvino"], expected, atol=1e-4)


def test_benchmark_has_a_row_for_pytorch_and_each_format(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = exported.parent
    argv = [str(run), "--runs", "3", "--batches", "1", "--num-images", "8", "--threads", "1"]
    assert benchmark.main(argv) == 0
    result = json.loads((run / "benchmark.json").read_text())
    rows = {r["format"]: r for r in result["rows"]}
    assert list(rows) == ["pytorch", *ALL_FORMATS]
    assert result["machine"]["threads"] == 1 and result["n_images"] == 8
    for fmt, row in rows.items():
        assert row["size_bytes"] > 0 and 0 < row["latency_ms_p50"] <= row["latency_ms_p95"], fmt
        assert row["throughput_ips"] > 0 and 0 <= row["accuracy"] <= 1 and not row["failed"]
    # The float formats agree with PyTorch on these 8 images, and score as it does.
    for fmt in ("onnx", "onnx-fp16", "openvino"):
        assert rows[fmt]["top1_agreement"] == 1.0
        assert rows[fmt]["accuracy"] == rows["pytorch"]["accuracy"]
    assert rows["pytorch"]["top1_agreement"] == 1.0
    assert result["int8_vs_fp32"]["size"] == pytest.approx(
        rows["onnx-int8"]["size_bytes"] / rows["onnx"]["size_bytes"]
    )
    out = capsys.readouterr().out
    assert all(fmt in out for fmt in rows) and "1 threads per runtime" in out
    assert "INT8 vs fp32 ONNX" in out


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda tmp, run: [str(tmp)], "tools/export.py"),  # nothing exported there
        (lambda tmp, run: [str(run), "--data", str(tmp / "nope")], "does not exist"),
        (lambda tmp, run: [str(run), "--threads", "0"], "--threads"),
        # The model file, not its folder: named, with the folder to pass instead.
        (lambda tmp, run: [str(run / "model.onnx")], "for model.onnx, pass its folder: /"),
        (lambda tmp, run: [str(tmp / "gone")], "does not exist"),
    ],
    ids=["no-export", "bad-data", "no-threads", "the-onnx-file", "missing"],
)
def test_benchmark_mistakes_exit_2(
    exported: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_args: Any,
    expected: str,
) -> None:
    assert benchmark.main(make_args(tmp_path, exported.parent)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("fields", [{"crop_pct": 1.0}, {"val_resize": "squash"}])
def test_the_verification_images_get_the_mappings_crop_pct_and_resize_mode(
    tmp_path: Path, fields: dict[str, Any]
) -> None:
    tree = make_tree(tmp_path / "tree", {"a": 3, "b": 2}, size=(24, 16))
    data = ImageFolderData(tree, img_size=16, batch_size=8, workers=0, **fields)
    opened, _ = tool.run_data({}, data.labels_mapping(), data=tree)
    images, verified_on = tool.verification_images(opened, data.labels_mapping(), 64)
    expected = normalize(torch.cat([x for x, _ in data.val_loader()]), data.mean, data.std)
    default = ImageFolderData(tree, img_size=16, batch_size=8, workers=0).val_loader()
    assert verified_on == "val" and torch.equal(images, expected)
    assert not torch.equal(images, normalize(next(iter(default))[0], data.mean, data.std))


def test_the_readmes_deployment_lines_are_the_tested_snippets() -> None:
    """The README's loaders are lines of docs/deployment.md's, which the test above runs."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"A deployer needs only.*?```python\n(.*?)```", text, flags=re.S)
    assert block is not None
    tested = {line.strip() for b in _doc_blocks() for line in b.splitlines()}
    for line in block.group(1).splitlines():
        code = line.split("#")[0].strip()
        assert not code or code in tested, line
