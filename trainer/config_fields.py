"""How a setting is declared (``setting()``), the checks and conversions that declarations
name, and the ``--recipe`` presets. The settings themselves are in ``trainer.config``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from trainer.errors import ConfigError
from trainer.models import MODELS, TIMM_PREFIX
from trainer.val_check import val_every_problem

# Who receives a setting by its name (``to=``); ``engine_name`` renames it on the way.
DATA, ENGINE, HOOKS = "data", "engine", "hooks"


def setting(
    default: Any,
    help: str,
    *,
    to: tuple[str, ...] = (),
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    switch: bool = False,
    demo: bool = False,
    parse: Callable[[str], Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    convert: Callable[[Any], Any] | None = None,
    engine_name: str | None = None,
    const: Any = None,
    saved: bool = True,
) -> Any:
    """A dataclass field that declares one setting (its flag is ``--`` + the name, dashed).

    Args:
        default: the value when nothing sets it; None with ``demo=True`` means "the demo's or
            --data's default" (``DEMO_DEFAULTS`` / ``DATA_DEFAULTS``).
        help: the flag's help text.
        to: the constructors that take it by name: "data" (``ImageFolderData``), "engine"
            (``Engine``), "hooks" (``hooks.default_hooks``).
        metavar, choices: as argparse's.
        switch: a bool flag that only turns on (``--compile``); other bools get ``--no-X`` too.
        demo: its default depends on the demo or --data (the help says both).
        parse: the flag's own text parser (``--lr``: a number or ``auto``); raises ValueError.
        check: the value's problem, or None; checked for every source (flag, file, Python).
        convert: how the constructor receives the value (``--cache none`` -> None).
        engine_name: ``Engine``'s name for it (``epochs`` -> ``max_epochs``).
        const: the value of the flag given without a value (its argument becomes optional).
        saved: False for the flags about one invocation, left out of ``args.json``.
    """
    meta = {
        "help": help,
        "to": to,
        "metavar": metavar,
        "choices": choices,
        "switch": switch,
        "demo": demo,
        "parse": parse,
        "check": check,
        "convert": convert,
        "engine_name": engine_name,
        "const": const,
        "saved": saved,
    }
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------ checks
def number(
    name: str, low: float, high: float = math.inf, *, below_high: bool = False, hint: str = ""
) -> Callable[[Any], str | None]:
    """The check of a numeric setting: a finite number from ``low`` up to ``high`` (excluded
    with ``below_high``); None (unset) passes. ``hint`` ends the message (what 0 means...)."""
    flag = "--" + name.replace("_", "-")
    span = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}{')' if below_high else ']'}"

    def problem(value: Any) -> str | None:
        if value is None:
            return None
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and math.isfinite(value) and low <= value
              and (value < high if below_high else value <= high))  # fmt: skip
        return None if ok else f"{flag} must be a number {span}, got {value!r}{hint}"

    return problem


def lr_value(text: str) -> float | str:
    """``--lr``: a finite number above 0, or ``auto`` (the LR range test picks it)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number or 'auto', got {text!r}") from None
    if lr_problem(value):
        raise ValueError(f"expected a finite number above 0 or 'auto', got {text!r}")
    return value


def lr_problem(value: Any) -> str | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number or 'auto', got {value!r}"
    if not (math.isfinite(value) and value > 0):
        return f"--lr must be a finite number above 0 (e.g. 1e-3) or auto, got {value!r}"
    return None


def model_problem(name: Any) -> str | None:
    # Checked here, not only in build_model, so a typo fails before the data is scanned.
    if name is None or name in MODELS or str(name).startswith(TIMM_PREFIX):
        return None
    return (
        f"--model {name!r} is not one of {', '.join(sorted(MODELS))}, "
        f"nor {TIMM_PREFIX}<name> for a timm model"
    )


def val_every_problem_text(value: float) -> str | None:
    problem = val_every_problem(value)
    if problem is None:
        return None
    return (
        f"--val-every {problem}: e.g. --val-every 0.25 validates four times an epoch, "
        "--val-every 500 every 500 optimizer steps"
    )


def parse_class_weights(text: str | None) -> dict[str, float] | None:
    """``--class-weights cat=2,dog=1`` as ``{"cat": 2.0, "dog": 1.0}``."""
    if not text:
        return None
    weights = {}
    for item in text.split(","):
        name, sep, value = item.rpartition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            name = ""
        if not sep or not name.strip():
            raise ConfigError(
                f"--class-weights item {item!r} is not NAME=WEIGHT; e.g. --class-weights cat=2,dog=1"
            )
    return weights


def none_for_none(value: str) -> str | None:
    return None if value == "none" else value


# --recipe: defaults for a kind of run, each a function of the demo or --data defaults. Flags
# given on the command line win; so do the values a replayed args.json holds (--resume,
# --config), unless --recipe itself is given on the command line.
RECIPES: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
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
