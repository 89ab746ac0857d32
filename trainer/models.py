"""build_model: torchvision and timm classifiers with their head sized to the dataset, and a small CNN."""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainer.errors import ConfigError


class SmallCNN(nn.Module):
    """A four-block CNN for quick CPU runs and tests (about 100k parameters at width 32).

    Args:
        num_classes: size of the output layer.
        width: channels of the first block; each later block doubles it (capped at 4x).
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        blocks: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            blocks += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        # Max, not average: a small shape on a large background would be averaged away.
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _replace_linear(parent: nn.Module, attr: str, num_classes: int) -> None:
    old = getattr(parent, attr)
    assert isinstance(old, nn.Linear)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def _torchvision(name: str) -> Callable[[int, bool], nn.Module]:
    def build(num_classes: int, pretrained: bool) -> nn.Module:
        import torchvision

        weights = "DEFAULT" if pretrained else None
        model = torchvision.models.get_model(name, weights=weights)
        if name.startswith("resnet"):
            _replace_linear(model, "fc", num_classes)
        elif name.startswith(("mobilenet_v3", "efficientnet", "convnext")):
            _replace_linear(model.classifier, str(len(model.classifier) - 1), num_classes)
        return model

    return build


MODELS: dict[str, Callable[[int, bool], nn.Module]] = {
    "small_cnn": lambda num_classes, pretrained: SmallCNN(num_classes),
    **{
        n: _torchvision(n)
        for n in (
            "resnet18",
            "resnet34",
            "resnet50",
            "mobilenet_v3_small",
            "mobilenet_v3_large",
            "efficientnet_b0",
            "convnext_tiny",
        )
    },
}


TIMM_PREFIX = "timm/"
TIMM_MISSING = (
    "{name} is a timm model, and timm is not installed: pip install -e '.[timm]' "
    "(or pip install timm), or pick one of the built-in models: {known}"
)


def build_model(name: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """Build a classifier with a fresh ``num_classes``-way head.

    Args:
        name: one of ``MODELS`` (torchvision resnet18/34/50, mobilenet_v3_small/large,
            efficientnet_b0, convnext_tiny, or small_cnn), or ``timm/<name>`` for any model
            of ``timm.list_models()`` when timm is installed (``pip install -e '.[timm]'``);
            a pretrained tag is allowed, e.g. ``timm/resnet50.a1_in1k``.
        num_classes: classes in the dataset.
        pretrained: load the ImageNet weights (torchvision's or timm's, from the Hugging Face
            Hub; downloaded once, needs internet) and replace the head. small_cnn has none.

    Example:
        >>> model = build_model("resnet18", num_classes=10, pretrained=True)
        >>> model = build_model("timm/convnext_nano", num_classes=10)
    """
    if name.startswith(TIMM_PREFIX):
        if num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
        return _timm_model(name, num_classes, pretrained)
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}, "
            "or timm/<name> for a timm model"
        )
    if pretrained and name == "small_cnn":
        raise ConfigError("small_cnn has no pretrained weights; drop --pretrained or pick resnet18")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    try:
        return MODELS[name](num_classes, pretrained)
    except OSError as e:  # urllib's URLError is an OSError: no network, no cached weights
        if not pretrained:
            raise
        raise ConfigError(
            f"could not download pretrained weights for {name} ({e}); connect to the internet "
            "once, or put the weights file in torch's hub cache ($TORCH_HOME/hub/checkpoints), "
            "or train without --pretrained"
        ) from e


def _timm_model(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    arch = name[len(TIMM_PREFIX) :]
    try:
        import timm
    except ImportError as e:
        raise ConfigError(TIMM_MISSING.format(name=name, known=", ".join(MODELS))) from e
    if not arch:
        raise ConfigError(f"{name!r} names no timm model; e.g. --model timm/resnet50")
    if not timm.is_model(arch):
        raise ConfigError(
            f"timm has no model {arch!r}; close names: {', '.join(close_timm_names(timm, arch))}. "
            "List more with: python -c "
            f"\"import timm; print(timm.list_models('*{_stem(arch)}*'))\""
        )
    if pretrained and not timm.is_model_pretrained(arch):
        raise ConfigError(f"timm has no pretrained weights for {arch!r}; drop --pretrained")
    try:
        # timm sizes the head itself: num_classes replaces the classifier of any architecture.
        model: nn.Module = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes)
    except OSError as e:  # no network and no cached weights (huggingface_hub raises OSErrors)
        raise ConfigError(
            f"could not download pretrained weights for {name} ({e}); connect to the internet "
            "once, or put the weights in the Hugging Face cache ($HF_HOME), "
            "or train without --pretrained"
        ) from e
    return model


def close_timm_names(timm: Any, arch: str, n: int = 6) -> list[str]:
    """Up to ``n`` timm model names near ``arch``: same stem first, then similar spellings."""
    names: list[str] = list(timm.list_models(f"*{_stem(arch)}*"))
    close = difflib.get_close_matches(arch, timm.list_models(), n=n, cutoff=0.6)
    found = list(dict.fromkeys(close + names))[:n]
    return found or ["none"]


def _stem(arch: str) -> str:
    """The family of a timm name: "resnet" for "resnet18x", "convnext" for "convnext_nano"."""
    match = re.match(r"[A-Za-z]+", arch)
    return match.group(0) if match else arch
