"""The augmentation flags of tools/train.py (trainer.data.augment, custom pipelines) and the
``--recipe`` presets."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from trainer.data.augment import AUTO_AUGMENT, Augment

# --recipe: defaults for a kind of run, each a function of the demo or --data defaults. Flags
# given on the command line win; so do the values a replayed args.json holds (--resume,
# --config), unless --recipe itself is given on the command line.
RECIPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "quick": lambda base: {"epochs": 5, "warmup_epochs": 0.5},
    "finetune": lambda base: {
        "pretrained": True,
        "model": "resnet18" if base["model"] == "small_cnn" else base["model"],  # has weights
        "lr": float(f"{base['lr'] / 10:.3g}"),
        "ema_decay": 0.999,
        "crop_scale": max(base["crop_scale"], 0.35),  # light augmentation
        "warmup_epochs": 0.5,
    },
    "scratch": lambda base: {
        "epochs": 2 * base["epochs"],
        "auto_augment": "trivialaugment",
        "random_erasing": 0.25,
        "mixup": 0.2,
        "cutmix": 1.0,
        "label_smoothing": 0.1,
    },
}


def add_augment_flags(p: argparse.ArgumentParser) -> None:
    """Augmentation beyond crop, flip and jitter (trainer.data.augment), custom pipelines, and
    the recipes."""
    p.add_argument_group("recipe").add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="defaults for a kind of run (explicit flags win): quick (5 epochs), finetune "
        "(pretrained, lr / 10, EMA, light augmentation), scratch (TrivialAugment, random "
        "erasing, MixUp/CutMix, label smoothing, twice the epochs); see the README",
    )
    g = p.add_argument_group("augmentation (training images; each off by default)")
    g.add_argument(
        "--auto-augment",
        choices=AUTO_AUGMENT,
        default="none",
        help="an AutoAugment-style policy from torchvision.transforms.v2",
    )
    g.add_argument(
        "--random-erasing",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of erasing a random box to the mean colour",
    )
    g.add_argument(
        "--jpeg-quality",
        type=int,
        default=0,
        metavar="LOW",
        help="re-encode as JPEG with a quality drawn from [LOW, 100]; 0 is off",
    )
    g.add_argument(
        "--blur",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a Gaussian blur (kernel 7, sigma 0.1 to 2)",
    )
    g.add_argument(
        "--noise",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of Gaussian noise (sigma 0.08 of the range)",
    )
    g.add_argument(
        "--downscale",
        type=float,
        default=0.0,
        metavar="LOW",
        help="shrink by a factor drawn from [LOW, 1] and scale back; 0 is off",
    )
    g.add_argument(
        "--affine",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a random affine map (rotate 15, shift 10%%, scale 0.9-1.1, shear 10)",
    )
    g.add_argument(
        "--perspective",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a random perspective warp (distortion 0.3)",
    )
    g.add_argument(
        "--mixup",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="MixUp on the device, Beta(ALPHA, ALPHA); 0 is off",
    )
    g.add_argument(
        "--cutmix",
        type=float,
        default=0.0,
        metavar="ALPHA",
        help="CutMix on the device, Beta(ALPHA, ALPHA); 0 is off (both on: one per batch)",
    )
    g.add_argument(
        "--transforms",
        type=str,
        default=None,
        metavar="FILE.py",
        help="your own pipelines: FILE.py defines train_transforms(img_size) and "
        "val_transforms(img_size) returning v2 transforms on uint8 tensors",
    )


def augment_from_config(config: dict[str, Any]) -> Augment:
    """The ``Augment`` the augmentation flags describe."""
    return Augment(**{f.name: config[f.name] for f in dataclasses.fields(Augment)})
