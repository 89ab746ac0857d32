"""ONNX export: dynamic batch, metadata round trip, verification and its failure report."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from trainer.export import (
    ExportVerificationError,
    OnnxModelError,
    export_and_verify,
    export_onnx,
    read_onnx_metadata,
    verify_onnx,
)

IMG = 16
CLASSES = ["cat", "dog", "fox"]


class TinyNet(nn.Module):
    """Conv-BN-ReLU-pool-linear: enough ops to exercise BN folding and the dynamic batch."""

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class ExportsDifferently(TinyNet):
    """Returns other logits while being exported: stands in for an op that exports wrongly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return -logits if torch.compiler.is_exporting() else logits


def make_mapping(image_size: int = IMG) -> dict[str, Any]:
    return {
        "class_to_idx": {c: i for i, c in enumerate(CLASSES)},
        "idx_to_class": {str(i): c for i, c in enumerate(CLASSES)},
        "num_classes": len(CLASSES),
        "image_size": image_size,
        "resize_size": int(image_size / 0.875),
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "interpolation": "bilinear",
    }


def make_model(cls: type[TinyNet] = TinyNet) -> TinyNet:
    torch.manual_seed(0)
    model = cls()
    # Non-trivial BN statistics, so eval mode and BN folding actually matter.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, IMG, IMG) * 2 + 0.5)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyNet, float]:
    model = make_model()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    start = time.perf_counter()
    export_onnx(model, path, labels_mapping=make_mapping(), model_name="tiny")
    return path, model, time.perf_counter() - start


def test_export_is_one_file_without_temp_leftovers(exported: tuple[Path, TinyNet, float]) -> None:
    path, _, seconds = exported
    print(f"tiny-model export took {seconds:.2f}s")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer)
    assert next(o.version for o in proto.opset_import if o.domain == "") >= 17


def test_caller_model_is_not_modified(exported: tuple[Path, TinyNet, float]) -> None:
    _, model, _ = exported
    assert model.training  # export ran on an eval-mode copy
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_matches_pytorch(exported: tuple[Path, TinyNet, float], batch: int) -> None:
    path, model, _ = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    x = torch.randn(batch, 3, IMG, IMG)
    (logits,) = session.run(["logits"], {"input": x.numpy()})
    ref = make_model()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = ref.eval()(x).numpy()
    assert logits.shape == (batch, len(CLASSES))
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_metadata_round_trip(exported: tuple[Path, TinyNet, float]) -> None:
    path, _, _ = exported
    assert read_onnx_metadata(path) == make_mapping()
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert json.loads(props["class_names"]) == CLASSES
    assert props["num_classes"] == "3"
    assert props["image_size"] == str(IMG)
    assert json.loads(props["normalization"]) == make_mapping()["normalization"]
    assert props["model_name"] == "tiny"


def test_verify_passes(exported: tuple[Path, TinyNet, float]) -> None:
    path, model, _ = exported
    report = verify_onnx(path, model, torch.randn(20, 3, IMG, IMG))
    assert report["passed"], report
    assert report["top1_agreement"] == 1.0
    assert report["max_abs_diff"] < 1e-4
    assert report["n_images"] == 20
    assert report["opset"] >= 17
    assert report["onnxruntime_version"] == ort.__version__


def test_mapping_falls_back_to_sidecar(
    exported: tuple[Path, TinyNet, float], tmp_path: Path
) -> None:
    path, _, _ = exported
    proto = onnx.load(path)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    with pytest.raises(OnnxModelError, match=r"metadata.*labels_mapping\.json"):
        read_onnx_metadata(bare)
    (tmp_path / "labels_mapping.json").write_text(json.dumps(make_mapping()))
    assert read_onnx_metadata(bare) == make_mapping()


def test_mappings_written_before_num_classes_still_load(
    exported: tuple[Path, TinyNet, float], tmp_path: Path
) -> None:
    path, _, _ = exported
    old = {k: v for k, v in make_mapping().items() if k != "num_classes"}
    proto = onnx.load(path)
    del proto.metadata_props[:]
    bare = tmp_path / "old.onnx"
    onnx.save(proto, bare)
    (tmp_path / "labels_mapping.json").write_text(json.dumps(old))
    assert read_onnx_metadata(bare) == make_mapping()  # filled in from idx_to_class
    onnx.helper.set_model_props(proto, {"labels_mapping": json.dumps(old)})
    onnx.save(proto, tmp_path / "old_meta.onnx")
    assert read_onnx_metadata(tmp_path / "old_meta.onnx")["num_classes"] == 3
    # The exporter writes it even when handed an old mapping.
    export_onnx(make_model(), tmp_path / "re.onnx", labels_mapping=old)
    props = {p.key: p.value for p in onnx.load(tmp_path / "re.onnx").metadata_props}
    assert json.loads(props["labels_mapping"]) == make_mapping()
    assert props["num_classes"] == "3"


def test_export_refuses_a_num_classes_that_disagrees(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes 4"):
        bad = {**make_mapping(), "num_classes": 4}
        export_onnx(make_model(), tmp_path / "m.onnx", labels_mapping=bad)
    assert not list(tmp_path.iterdir())


def test_read_metadata_user_errors(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match="not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx model\xff" * 10)
    with pytest.raises(OnnxModelError, match="not a readable ONNX model"):
        read_onnx_metadata(junk)


def test_export_and_verify_writes_report(tmp_path: Path) -> None:
    report = export_and_verify(
        make_model(),
        tmp_path / "m.onnx",
        labels_mapping=make_mapping(),
        images=torch.randn(8, 3, IMG, IMG),
        report_path=tmp_path / "verify.json",
    )
    assert report["passed"]
    assert json.loads((tmp_path / "verify.json").read_text())["n_images"] == 8


def test_mismatch_raises_after_writing_report(tmp_path: Path) -> None:
    images = torch.randn(8, 3, IMG, IMG)
    with pytest.raises(ExportVerificationError) as info:
        export_and_verify(
            make_model(ExportsDifferently),
            tmp_path / "bad.onnx",
            labels_mapping=make_mapping(),
            images=images,
        )
    message = str(info.value)
    assert "bad.onnx" in message and "agreement" in message and "logit diff" in message
    report = json.loads((tmp_path / "bad.verify.json").read_text())
    assert report["passed"] is False
    assert report["max_abs_diff"] > 1e-3
    assert {"top1_agreement", "max_abs_diff", "n_images"} <= set(report)
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset"):
        export_onnx(TinyNet(), tmp_path / "m.onnx", labels_mapping=make_mapping(), opset=13)
    mapping = make_mapping()
    del mapping["image_size"]
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(TinyNet(), tmp_path / "m.onnx", labels_mapping=mapping)
    assert not list(tmp_path.iterdir())


def test_huge_models_fall_back_to_external_data(
    exported: tuple[Path, TinyNet, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.export as export_module

    path, _, _ = exported
    monkeypatch.setattr(export_module, "_SINGLE_FILE_LIMIT", 0)
    export_module._save_proto(onnx.load(path), tmp_path / "big.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    session = ort.InferenceSession(str(tmp_path / "big.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((2, 3, IMG, IMG), np.float32)})[0].shape == (2, 3)
    assert read_onnx_metadata(tmp_path / "big.onnx")["image_size"] == IMG


def test_unreachable_opset_is_an_error_not_a_silent_upgrade(tmp_path: Path) -> None:
    # torch 2.x implements opset 18+; converting this graph's ReduceMean down to 17 fails.
    with pytest.raises(ValueError, match="opset 17"):
        export_onnx(make_model(), tmp_path / "m.onnx", labels_mapping=make_mapping(), opset=17)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: [1, 2], "JSON object"),
        (lambda m: {**m, "idx_to_class": {"0": "a", "2": "b"}}, "keys must be 0.."),
        (lambda m: {**m, "idx_to_class": {"0": 1, "1": 2, "2": 3}}, "class names"),
        (lambda m: {**m, "class_to_idx": {"zebra": 0}}, "disagree"),
        (lambda m: {**m, "num_classes": 4}, "'num_classes' is 4"),
        (lambda m: {**m, "num_classes": "3"}, "'num_classes' is '3'"),
        (lambda m: {**m, "image_size": "big"}, "image_size"),
        (lambda m: {**m, "normalization": {"mean": [0.5], "std": [0.2]}}, "normalization"),
        (lambda m: {**m, "normalization": {"mean": [0, 0, 0], "std": [1, 0, 1]}}, "std > 0"),
    ],
)
def test_malformed_sidecar_is_a_clear_error(
    exported: tuple[Path, TinyNet, float], tmp_path: Path, capsys, change, problem: str
) -> None:
    from tools import predict

    path, _, _ = exported
    proto = onnx.load(path)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    sidecar = tmp_path / "labels_mapping.json"
    sidecar.write_text(json.dumps(change(make_mapping())))
    with pytest.raises(OnnxModelError, match=problem):
        read_onnx_metadata(bare)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert predict.main(["--model", str(bare), str(image)]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and str(sidecar) in err and "Traceback" not in err


class ExportsShifted(TinyNet):
    """Exports logits 0.05 higher: every top-1 agrees, the logits do not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits + 0.05 if torch.compiler.is_exporting() else logits


class ExportsSwappedTie(TinyNet):
    """Two classes a hair apart, in the other order once exported: every top-1 disagrees
    while every logit is within the tolerance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = super().forward(x)[:, :1]
        gap = -1e-4 if torch.compiler.is_exporting() else 1e-4
        return torch.cat([z, z + gap, z - 1.0], dim=1)


@pytest.mark.parametrize(
    ("cls", "agrees", "within_tolerance"),
    [(ExportsShifted, True, False), (ExportsSwappedTie, False, True)],
)
def test_verification_fails_on_either_check_alone(
    tmp_path: Path, cls: type[TinyNet], agrees: bool, within_tolerance: bool
) -> None:
    model = make_model(cls)
    path = tmp_path / "m.onnx"
    export_onnx(model, path, labels_mapping=make_mapping(), model_name="tiny")
    report = verify_onnx(path, model, torch.randn(12, 3, IMG, IMG))
    assert (report["top1_agreement"] == 1.0) == agrees
    assert (report["max_abs_diff"] <= report["tolerance"]) == within_tolerance
    assert report["passed"] is False


def test_verified_huge_model_replaces_the_old_one_with_its_own_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.export as export_module

    monkeypatch.setattr(export_module, "_SINGLE_FILE_LIMIT", 0)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old model")
    (tmp_path / "model.onnx.data").write_bytes(b"old weights")
    images = torch.randn(4, 3, IMG, IMG)
    export_module.export_and_verify(
        make_model(), path, labels_mapping=make_mapping(), images=images
    )
    data = [p.name for p in tmp_path.glob("*.data")]
    assert (
        len(data) == 1 and data[0] != "model.onnx.data"
    )  # the old weights went with the old model
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": images.numpy()})[0].shape == (4, 3)


EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


def test_exporter_chatter_stays_off_the_terminal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    levels = [logging.getLogger(n).level for n in EXPORTER_LOGGERS]
    caplog.set_level(logging.INFO)  # as the tools log: INFO and up reaches the terminal
    export_onnx(make_model(), tmp_path / "m.onnx", labels_mapping=make_mapping())
    chatter = [r.getMessage() for r in caplog.records if r.name.startswith(EXPORTER_LOGGERS)]
    assert chatter == []  # e.g. "Removed 38 unused nodes", a dozen per export
    assert capsys.readouterr().out == ""
    assert [logging.getLogger(n).level for n in EXPORTER_LOGGERS] == levels  # put back


def test_exporter_errors_and_warnings_still_show(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def failing_export(*args: Any, **kwargs: Any) -> None:
        print("the exporter's account of the failure")
        logging.getLogger("onnxscript").warning("a warning worth seeing")
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    caplog.set_level(logging.INFO)
    with pytest.raises(RuntimeError, match="unsupported op"):
        export_onnx(make_model(), tmp_path / "m.onnx", labels_mapping=make_mapping())
    assert "the exporter's account of the failure" in capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records] == ["a warning worth seeing"]




class Shifted(nn.Module):
    """``model``'s logits plus ``shift``: a reference the export is ``shift`` away from."""

    def __init__(self, model: nn.Module, shift: float) -> None:
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.shift


def test_the_tolerance_scales_with_the_logits(exported: tuple[Path, TinyNet, float]) -> None:
    """Logits in the hundreds (large inputs): the allowed difference is atol times the largest
    logit. A tenth of that passes, though an absolute atol would fail it; ten times it fails."""
    path, model, _ = exported
    images = torch.randn(8, 3, IMG, IMG) * 5000
    with torch.inference_mode():
        largest = float(copy.deepcopy(model).eval()(images).abs().max())
    assert largest > 100
    atol = 1e-3
    for factor, passed in ((0.1, True), (10.0, False)):
        report = verify_onnx(path, Shifted(model, factor * atol * largest), images, atol=atol)
        assert report["top1_agreement"] == 1.0
        assert report["max_abs_diff"] > 10 * atol
        assert report["passed"] is passed, factor
