"""build_model: timm models by name when timm is installed, and clear errors otherwise."""

from __future__ import annotations

import sys

import pytest
import torch

from trainer.errors import ConfigError
from trainer.models import build_model


def test_timm_model_gets_a_head_sized_to_the_classes() -> None:
    pytest.importorskip("timm", reason="the [timm] extra is not installed")
    model = build_model("timm/test_resnet", num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_unknown_timm_name_suggests_close_ones() -> None:
    pytest.importorskip("timm", reason="the [timm] extra is not installed")
    with pytest.raises(ConfigError, match=r"no model 'resnet18x'; close names: resnet18"):
        build_model("timm/resnet18x", num_classes=3)
    with pytest.raises(ConfigError, match="names no timm model"):
        build_model("timm/", num_classes=3)


def test_timm_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[timm\]'"):
        build_model("timm/resnet18", num_classes=3)


def test_unknown_model_mentions_timm() -> None:
    with pytest.raises(ConfigError, match="timm/<name>"):
        build_model("resnet9000", num_classes=3)
