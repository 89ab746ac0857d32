from __future__ import annotations

import pytest
import torch

from trainer.device import autocast_dtype, resolve_device, resolve_precision
from trainer.errors import ConfigError


@pytest.mark.parametrize(
    ("precision", "device", "bf16_ok", "expected"),
    [
        ("auto", "cpu", False, "32"),
        ("auto", "cuda", True, "bf16-mixed"),
        ("auto", "cuda", False, "16-mixed"),
        ("32", "cuda", True, "32"),
        ("16-mixed", "cuda", True, "16-mixed"),
        ("bf16-mixed", "cpu", False, "bf16-mixed"),
        ("16-mixed", "cpu", False, "16-mixed"),  # fp16 autocast with a CPU GradScaler
    ],
)
def test_precision_selection(monkeypatch, precision, device, bf16_ok, expected) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve_precision(precision, torch.device(device)) == expected


def test_autocast_dtype_and_bad_values() -> None:
    assert autocast_dtype("32") is None
    assert autocast_dtype("bf16-mixed") is torch.bfloat16
    assert autocast_dtype("16-mixed") is torch.float16
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_device_auto_and_errors(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="not a device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="asked for Apple's MPS.*--device cpu"):
        resolve_device("mps")  # once torch's RuntimeError at the model's move
