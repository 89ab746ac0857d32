"""Argument checks of ``ImageFolderData``: every problem named at once, before any file is read."""

from __future__ import annotations

import math
from pathlib import Path

from trainer.data.augment import Augment
from trainer.data.pipelines import Transform
from trainer.data.preflight import VERIFY_MODES
from trainer.data.sampler import SAMPLER_MODES
from trainer.data.transforms import CROP_PCT, resize_problems
from trainer.errors import ConfigError, DataError


def check_options(
    img_size: int,
    batch_size: int,
    workers: int | None,
    val_fraction: float,
    crop_scale: float | None,
    color_jitter: float,
    sampler: str,
    class_weights: dict[str, float] | None,
    cache: str | None,
    max_bad_fraction: float,
    decode: str,
    verify: str,
    max_image_pixels: int = 1,
    cache_short_side: int | None = None,
    cache_disk_max_gb: float = 1.0,
    *,
    crop_pct: float = CROP_PCT,
    val_resize: str | None = "crop",
) -> None:
    """Every invalid argument of ``ImageFolderData`` at once, as one ``ConfigError``."""
    problems = []
    if img_size < 1:
        problems.append(f"img_size must be >= 1, got {img_size}")
    if batch_size < 1:
        problems.append(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        problems.append(f"workers must be >= 0, got {workers}")
    if not 0 <= val_fraction < 1:
        problems.append(f"val_fraction must be in [0, 1), got {val_fraction}")
    if crop_scale is not None and not 0 < crop_scale <= 1:  # None: the task's default
        problems.append(f"crop_scale must be in (0, 1], got {crop_scale}")
    problems += resize_problems(crop_pct, val_resize or "crop")
    if color_jitter < 0:
        problems.append(f"color_jitter must be >= 0, got {color_jitter}")
    if sampler not in SAMPLER_MODES:
        problems.append(f"sampler must be one of {', '.join(SAMPLER_MODES)}, got {sampler!r}")
    if sampler == "manual" and not class_weights:
        problems.append("sampler='manual' needs class_weights (class name -> weight)")
    if class_weights and sampler != "manual":  # they would be ignored
        problems.append(f"class_weights (--class-weights) are drawn by sampler='manual', not "
                        f"{sampler!r} (--sampler {sampler}); drop one of the two")  # fmt: skip
    if cache not in (None, "ram", "disk"):
        problems.append(f"cache must be None, 'ram' or 'disk', got {cache!r}")
    if cache_short_side is not None and cache_short_side < img_size:
        problems.append(
            f"cache_short_side must be >= img_size ({img_size}), got {cache_short_side}"
        )
    if not cache_disk_max_gb > 0:
        problems.append(f"cache_disk_max_gb must be > 0, got {cache_disk_max_gb}")
    if not 0 <= max_bad_fraction <= 1:
        problems.append(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    if max_image_pixels < 1:
        problems.append(f"max_image_pixels must be >= 1, got {max_image_pixels}")
    if verify not in VERIFY_MODES:
        problems.append(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    if decode not in ("cpu", "gpu"):
        problems.append(f"decode must be 'cpu' or 'gpu', got {decode!r}")
    if decode == "gpu" and cache == "ram":
        problems.append(
            "decode='gpu' reads JPEG files for the device to decode, while cache='ram' "
            "keeps images decoded in memory: use one or the other"
        )
    if problems:
        raise ConfigError("; ".join(problems) + ".")

def check_augment(augment: Augment, decode: str, train_transform: Transform | None) -> None:
    """The augmentation's own problems, and per-image options that ``decode='gpu'`` excludes."""
    problems = augment.problems()
    if decode == "gpu" and (augment.per_image or train_transform is not None):
        what = augment.per_image_flags + (
            ["train_transform (--transforms)"] if train_transform is not None else []
        )
        problems.append(
            f"decode='gpu' (--decode gpu) decodes images on the device after the loader "
            f"workers, but {', '.join(what)} must run in the workers on decoded images: "
            "drop --decode gpu, or those options (MixUp/CutMix work with both)"
        )
    if problems:
        raise ConfigError("; ".join(problems) + ".")

def class_weights_by_index(
    class_weights: dict[str, float] | None, classes: list[str], root: Path
) -> dict[int, float] | None:
    """``class_weights`` by class index, checked against the class names found in ``root``."""
    if not class_weights:
        return None
    unknown = sorted(set(class_weights) - set(classes))
    if unknown:
        raise DataError(
            f"class_weights name classes that are not in {root}: "
            f"{', '.join(map(repr, unknown))}. Known classes: {', '.join(classes)}. "
            "Fix the names (they are the class folder names)."
        )
    bad = {k: v for k, v in class_weights.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise ConfigError(f"class_weights must be finite and >= 0; got {bad}.")
    index = {c: i for i, c in enumerate(classes)}
    return {index[k]: float(v) for k, v in class_weights.items()}
