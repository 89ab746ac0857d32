from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from hooks.model_info import ModelInfoHook, model_size
from tests.conftest import (
    StandInData,
    assert_survives_unwritable,
    console_text,
    quiet_console,
    run_fit,
)


def test_model_info(tmp_path: Path, data: StandInData) -> None:
    console = quiet_console()
    hook = ModelInfoHook(tmp_path, console=console)
    engine = run_fit([hook], data, epochs=1)
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert info == hook.info
    params = sum(p.numel() for p in engine.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in engine.model.buffers())
    assert info["model"] == "small_cnn"  # from engine.args
    assert info["parameters"] == info["trainable_parameters"] == params
    assert info["size_mb"] == pytest.approx((params * 4 + buffers) / 1e6, abs=1e-4)
    assert info["input_size"] == [3, 16, 16]
    assert info["num_classes"] == 3
    assert (info["precision"], info["device"]) == ("32", "cpu")
    # labels_mapping.json is the run folder's file, written by RunFolderHook only.
    assert not (tmp_path / "labels_mapping.json").exists()
    assert "small_cnn" in console_text(console) and f"{params:,}" in console_text(console)


def test_model_size_counts_frozen_weights_and_buffers() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model[0].weight.requires_grad_(False)
    size = model_size(model)
    assert size["parameters"] == 4 * 3 + 3 + 3 + 3
    assert size["trainable_parameters"] == 3 + 3 + 3
    # Buffers: running mean and var (float32) plus num_batches_tracked (int64).
    assert size["size_bytes"] == 21 * 4 + 6 * 4 + 8
    assert size["size_mb"] == pytest.approx(size["size_bytes"] / 1e6)


def test_explicit_name_wins(tmp_path: Path) -> None:
    hook = ModelInfoHook(tmp_path, model_name="my net", console=quiet_console())
    run_fit([hook], epochs=1)
    assert hook.info["model"] == "my net"


def test_unwritable_out_dir_warns_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert_survives_unwritable(
        lambda d: ModelInfoHook(d, console=quiet_console()), tmp_path, caplog
    )


@pytest.mark.parametrize("verbosity", ["quiet", "normal", "verbose"])
def test_verbosity_table_line_or_nothing(tmp_path: Path, data: StandInData, verbosity: str) -> None:
    console = quiet_console()
    hook = ModelInfoHook(tmp_path, console=console, verbosity=verbosity)  # type: ignore[arg-type]
    run_fit([hook], data, epochs=1)
    text = console_text(console)
    params = f"{hook.info['parameters']:,}"
    if verbosity == "quiet":
        assert text == ""
    elif verbosity == "normal":
        assert text.splitlines() == [
            f"model small_cnn: {params} parameters ({hook.info['size_mb']:.2f} MB), "
            "input 3x16x16, 3 classes, precision 32 on cpu"
        ]
    else:
        assert "Model" in text and params in text and len(text.splitlines()) > 8
    assert (tmp_path / "model_info.json").is_file()  # written at every level
