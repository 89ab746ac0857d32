"""build_model: torchvision and timm classifiers with their head sized to the dataset, and a small CNN."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from trainer.errors import ConfigError


class SmallCNN(nn.Module):
    """A four-block CNN for quick CPU runs and tests (about 100k parameters at width 32).

    Args:
        num_classes: size of the output layer.
        width: channels of the first block; each later block doubles it (capped at 4x).
    """

    MIN_SIZE = 16  # four 2x2 max-pools: a smaller input has nothing left to pool

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


def _weights_url(name: str) -> str:
    """The URL of torchvision's default ImageNet weights for ``name``."""
    import torchvision

    return str(torchvision.models.get_model_weights(name).DEFAULT.url)


def _hub_file(url: str) -> Path:
    """Where torch.hub caches the file at ``url``: ``$TORCH_HOME/hub/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _check_hash(path: Path, url: str) -> None:
    """Refuse a weights file whose SHA-256 does not start with the prefix in its name.

    torch.hub checks the hash only while downloading; a file already in the cache (truncated,
    tampered with, or another file under the name) would otherwise be loaded as is.
    """
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None:
        raise ConfigError(
            f"cannot verify the pretrained weights from {url}: the file name {path.name} carries "
            "no hash; train without --pretrained"
        )
    prefix = match.group(1)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(prefix):
        raise ConfigError(
            f"the pretrained weights file {path} is not the published one: its SHA-256 starts "
            f"with {digest.hexdigest()[: len(prefix)]}, its name says {prefix} (a truncated "
            "download, or another file under that name). Delete it and run again to download "
            "it afresh, or train without --pretrained"
        )


def load_verified_weights(url: str) -> dict[str, Any]:
    """Weights from ``url`` through torch.hub's cache, hash-checked and read with weights_only.

    Downloads the file when it is not cached; a cached file is checked too. Reading with
    ``weights_only=True`` means the file cannot run code while it is unpickled.

    Raises:
        ConfigError: the file's hash is wrong or it holds more than tensors and plain data.
        OSError: it is not cached and cannot be downloaded (no network).
    """
    path = _hub_file(url)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, os.fspath(path), progress=True)
    _check_hash(path, url)
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle's errors for anything beyond tensors and plain data
        raise ConfigError(
            f"the pretrained weights file {path} holds more than weights ({type(e).__name__}); "
            "delete it and run again to download it afresh, or train without --pretrained"
        ) from e
    return state


def _torchvision(name: str) -> Callable[[int, bool], nn.Module]:
    def build(num_classes: int, pretrained: bool) -> nn.Module:
        import torchvision

        # The ImageNet architecture (1000 classes) first; its weights are loaded here, not by
        # torchvision, which would skip the hash of a cached file and unpickle unrestricted.
        model = torchvision.models.get_model(name, weights=None)
        if pretrained:
            model.load_state_dict(load_verified_weights(_weights_url(name)))
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
        raise ConfigError(
            "small_cnn has no pretrained weights; drop --pretrained (pass --no-pretrained after "
            "--recipe finetune), or pick resnet18"
        )
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
    if pretrained:
        _check_timm_cache(timm, arch)
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


def _check_timm_cache(timm: Any, arch: str) -> None:
    """Have timm check the hash of what it downloads, and check a cached URL file ourselves.

    timm reads Hugging Face Hub weights as safetensors or with ``weights_only=True``, and the
    Hub checks their hashes on download; URL weights go through torch.hub's cache, where a
    file already present is not checked, hence the check here.
    """
    timm.models.set_pretrained_check_hash(True)
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or getattr(cfg, "file", None) or getattr(cfg, "hf_hub_id", None):
        return
    url = getattr(cfg, "url", None)
    if isinstance(url, str) and url and _hub_file(url).is_file():
        _check_hash(_hub_file(url), url)


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
