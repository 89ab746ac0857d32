"""build_model: timm models by name when timm is installed, and clear errors otherwise."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainer import models
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


def _fake_published_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, right_hash: bool
) -> dict[str, torch.Tensor]:
    """mobilenet_v3_small's ImageNet-shaped weights, cached as torch.hub would name them."""
    torch.manual_seed(0)
    state = build_model("mobilenet_v3_small", num_classes=1000).state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    prefix = digest[:8] if right_hash else ("0" if digest[0] != "0" else "1") + digest[1:8]
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / f"mobilenet_v3_small-{prefix}.pth").write_bytes(buf.getvalue())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    url = f"https://download.invalid/models/mobilenet_v3_small-{prefix}.pth"
    monkeypatch.setattr(models, "_weights_url", lambda name: url)

    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached file is there: nothing to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return state


def test_pretrained_weights_load_with_weights_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _fake_published_weights(tmp_path, monkeypatch, right_hash=True)
    loads: list[object] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = build_model("mobilenet_v3_small", num_classes=4, pretrained=True)
    assert loads == [True]
    got = model.state_dict()
    assert got["classifier.3.weight"].shape == (4, 1024)  # a fresh head for 4 classes
    assert torch.equal(got["features.0.0.weight"], state["features.0.0.weight"])


def test_cached_weights_with_a_wrong_hash_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_published_weights(tmp_path, monkeypatch, right_hash=False)
    with pytest.raises(ConfigError, match=r"is not the published one: its SHA-256") as info:
        build_model("mobilenet_v3_small", num_classes=4, pretrained=True)
    assert str(tmp_path / "torch_home") in str(info.value) and "Delete it" in str(info.value)


def test_weights_that_are_more_than_tensors_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_published_weights(tmp_path, monkeypatch, right_hash=True)
    (cached,) = (tmp_path / "torch_home" / "hub" / "checkpoints").iterdir()
    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(1), "code": ConfigError("runs on load")}, buf)
    cached.write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()[:8]
    named = cached.with_name(f"mobilenet_v3_small-{digest}.pth")
    cached.rename(named)
    monkeypatch.setattr(models, "_weights_url", lambda name: f"https://x.invalid/{named.name}")
    with pytest.raises(ConfigError, match="holds more than weights"):
        build_model("mobilenet_v3_small", num_classes=4, pretrained=True)


def test_timm_cached_url_weights_with_a_wrong_hash_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timm = pytest.importorskip("timm", reason="the [timm] extra is not installed")
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "test_resnet-deadbeef.pth").write_bytes(b"not the published file")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = SimpleNamespace(
        file=None, hf_hub_id=None, url="https://x.invalid/test_resnet-deadbeef.pth"
    )
    monkeypatch.setattr(timm.models, "get_pretrained_cfg", lambda arch: cfg)
    with pytest.raises(ConfigError, match="test_resnet-deadbeef.pth is not the published one"):
        build_model("timm/test_resnet", num_classes=3, pretrained=True)
