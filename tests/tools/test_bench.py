"""tools/bench.py on micro workloads: the JSON it writes and the runs it compares.

No timing is asserted: a speed on a shared CI machine says nothing. These tests check that
every run happens, that the numbers are well formed, and that the flags reach the output.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import make_tree
from tools import bench
from tools.benchmarks import bench_common

WORKLOAD_KEYS = {"name", "bare_img_s", "engine_img_s", "engine_hooks_img_s", "ratio_hooks"}


def _positive(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_tiny_preset_writes_the_documented_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--preset", "tiny", "--device", "cpu", "--ema", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["workloads"]) == len(bench.PRESETS["tiny"].workloads)
    for w in doc["workloads"]:
        assert w.keys() >= WORKLOAD_KEYS
        assert isinstance(w["name"], str) and w["name"]
        for key in (
            "bare_img_s",
            "engine_img_s",
            "engine_hooks_img_s",
            "ratio_hooks",
            "ratio_engine",
            "ratio_hooks_epoch",
            "ema_img_s",
        ):
            assert _positive(w[key]), (key, w[key])
        assert math.isfinite(w["ema_cost"])
        assert w["hooks_epoch_end_s"] >= 0
    assert doc["device"] == "cpu"
    # What a results file must say to be read later: the machine, the versions, the command.
    assert doc["card"] and doc["torch"] == torch.__version__ and doc["date"]
    assert doc["command"].endswith(f"--preset tiny --device cpu --ema --json {out}")
    printed = capsys.readouterr().out
    assert "bare" in printed and "EMA 0.999" in printed


def test_model_picks_the_presets_workloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--model", "small_cnn", "--json", str(out)]
    assert bench.main(argv) == 0
    assert [w["model"] for w in json.loads(out.read_text())["workloads"]] == ["small_cnn"]
    assert bench.main(["--preset", "tiny", "--device", "cpu", "--model", "resnet18"]) == 2
    assert "--preset tiny has no resnet18 workload" in capsys.readouterr().err


def test_hooks_run_writes_the_default_artifacts(tmp_path: Path) -> None:
    # The "+hooks" run must really run the default hooks, not an empty list.
    w = bench_common.Workload("small_cnn", 16, 4, steps=2, num_classes=3, val_batches=1)
    data = bench_common.DeviceBatches(w, torch.device("cpu"))
    hooks = bench_common.hooks_for_bench(tmp_path)
    run = bench_common.EngineRun("hooks", w, data, torch.device("cpu"), "32", 1, hooks)
    e = run.run_epoch()
    assert e.images == 8 and 0 < e.train_s <= e.wall_s
    for name in ("metrics.csv", "checkpoints/last.pt", "plots/loss.png", "model_info.json"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "model.onnx").exists()  # export is left out of the bench


def test_lightning_flag_without_lightning_notes_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import fail, as when the package is absent.
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(__import__("sys").modules, name, None)
    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--device", "cpu", "--lightning", "--json", str(out)]
    argv += ["--threads", "1", "--clock", "cpu"]  # and the CPU-time clock, on the way
    assert bench.main(argv) == 0
    (w,) = json.loads(out.read_text())["workloads"]
    assert "not installed" in w["lightning_note"]


def test_data_mode_reports_loader_model_and_wait_share(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", counts={"a": 6, "b": 6})
    out = tmp_path / "data.json"
    argv = [
        "--data",
        str(root),
        "--model",
        "small_cnn",
        "--img-size",
        "16",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--rounds",
        "1",
        "--device",
        "cpu",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    d = json.loads(out.read_text())["data"]
    for key in ("loader_img_s", "model_img_s", "end_to_end_img_s", "end_to_end_steady_img_s"):
        assert _positive(d[key]), (key, d[key])
    assert 0 <= d["data_wait_share"] <= 1
    assert d["ratio_end_to_end"] == pytest.approx(d["end_to_end_img_s"] / d["model_img_s"])
    assert d["first_batch_s"] > 0
    assert d["batches_per_epoch"] == 3


def test_fit_mode_times_whole_fits_with_and_without_hooks(
    tmp_path: Path
) -> None:
    root = make_tree(tmp_path / "tree", counts={"a": 6, "b": 6})
    out = tmp_path / "fit.json"
    argv = ["--fit", "--data", str(root), "--model", "small_cnn", "--img-size", "16"]
    argv += ["--batch-size", "4", "--workers", "0", "--epochs", "1", "--rounds", "2"]
    assert bench.main([*argv, "--device", "cpu", "--json", str(out)]) == 0
    f = json.loads(out.read_text())["fit"]
    assert _positive(f["epoch_s_none"]) and _positive(f["epoch_s_hooks"])
    assert len(f["hooks_overhead_per_round"]) == 2
    assert math.isfinite(f["hooks_overhead"])
    # Fit end with hooks holds the ONNX export and the final report; without, nearly nothing.
    assert f["fit_end_s_hooks"] > f["fit_end_s_none"]


def test_bad_rounds_is_a_usage_error() -> None:
    assert bench.main(["--preset", "tiny", "--rounds", "0"]) == 2
    assert bench.main(["--fit", "--epochs", "0"]) == 2
    assert bench.main(["--preset", "tiny", "--clock", "cpu", "--threads", "2"]) == 2


def test_loader_mode_times_torchvision_and_ours_on_the_same_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = make_tree(tmp_path / "tree", {"a": 4, "b": 4}, size=(24, 20))
    out = tmp_path / "loader.json"
    argv = ["--loader", str(tree), "--img-size", "16", "--batch-size", "4", "--workers", "0",
            "--rounds", "2", "--cache", "disk", "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    doc = json.loads(out.read_text())["loader"]
    assert list(doc["runs"]) == ["torchvision", "ours", "ours, --cache disk"]
    assert doc["images_per_epoch"] == 8 and doc["rounds"] == 2
    for run in doc["runs"].values():
        assert len(run["per_round_img_s"]) == 2
        assert all(_positive(v) for v in (run["img_s"], run["ratio"], run["first_epoch_img_s"]))
    assert doc["runs"]["torchvision"]["ratio"] == 1.0
    printed = capsys.readouterr().out
    assert "torchvision" in printed and "x torchvision" in printed


def test_label_issues_run_records_every_training_sample(tmp_path: Path) -> None:
    # --label-issues times LabelIssuesHook at work: the batches must name their samples.
    from hooks.label_issues import LabelIssuesHook
    from tools.benchmarks.bench_steps import IndexedData

    w = bench_common.Workload("small_cnn", 16, 4, steps=3, num_classes=3, val_batches=1)
    data = IndexedData(bench_common.DeviceBatches(w, torch.device("cpu")), w.batch_size)
    hook = LabelIssuesHook(tmp_path)
    bench_common.EngineRun("labels", w, data, torch.device("cpu"), "32", 1, [hook]).run_epoch()
    assert hook.epoch_counts[0].tolist() == [1.0] * 12
