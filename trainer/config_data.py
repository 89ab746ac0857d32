"""The data group of a run's settings (``trainer.config`` holds the others and ``TrainConfig``):
where the images come from and how they are loaded. Each field is one ``setting()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainer.config_fields import DATA, none_for_none, parse_class_weights, setting
from trainer.data.labelfile import TASKS
from trainer.data.preflight import VERIFY_MODES
from trainer.data.sampler import SAMPLER_MODES
from trainer.data.transforms import CROP_PCT, RESIZE_MODES, resize_problems


def crop_pct_problem(value: object) -> str | None:
    problems = resize_problems(value, "crop")
    return f"--crop-pct: {problems[0]}" if problems else None


@dataclass
class DataConfig:
    """Where the images come from and how they are loaded."""

    group: ClassVar[str] = "data"

    data: str | None = setting(
        None,
        "ImageFolder root, or a .csv/.jsonl label file (see --image-key); omitted: the "
        "built-in demo dataset of drawn shapes",
    )
    img_size: int | None = setting(None, "square input side", to=(DATA,), demo=True)
    batch_size: int | None = setting(None, "images per batch", to=(DATA,), demo=True)
    workers: int | None = setting(
        None, "data-loading processes; default min(8, CPU count)", to=(DATA,)
    )
    val_fraction: float = setting(
        0.2, "share held out for val when DIR has only class folders", to=(DATA,)
    )
    crop_scale: float | None = setting(
        None,
        "smallest area share kept by RandomResizedCrop (multi-label data: 1.0, the whole image)",
        to=(DATA,),
        demo=True,
        metavar="LOW",
    )
    crop_pct: float = setting(
        CROP_PCT,
        "validation, test and prediction resize to img_size / crop_pct, then centre-crop "
        "img_size (timm's name; 0.875 turns 224 into 256, 1.0 crops nothing); recorded in "
        "labels_mapping.json",
        to=(DATA,),
        check=crop_pct_problem,
        metavar="SHARE",
    )
    val_resize: str | None = setting(
        None,
        "crop resizes the short side and centre-crops (--crop-pct); squash resizes the whole "
        "image to img_size x img_size, no crop (documents, full-frame objects); default crop, "
        "squash for multi-label data unless --crop-pct is given; recorded in "
        "labels_mapping.json",
        to=(DATA,),
        choices=RESIZE_MODES,
    )
    hflip: bool = setting(
        True, "random horizontal flips (switch off for digits and text)", to=(DATA,)
    )
    color_jitter: float = setting(
        0.0,
        "brightness/contrast/saturation jitter, and hue up to min(0.1, STRENGTH/4); 0 is off",
        to=(DATA,),
        metavar="STRENGTH",
    )
    sampler: str = setting(
        "none",
        "balanced draws each class equally often; manual uses --class-weights",
        to=(DATA,),
        choices=SAMPLER_MODES,
    )
    class_weights: str | None = setting(
        None,
        "per-class sampling weights by class name (implies --sampler manual)",
        to=(DATA,),
        metavar="NAME=W,...",
        convert=parse_class_weights,
    )
    cache: str = setting(
        "none",
        "ram keeps decoded, pre-resized images in memory when they fit; disk stores a resized "
        "JPEG copy of each large image in $IMGTRAINER_CACHE/images in the first epoch and "
        "reads the copies after",
        to=(DATA,),
        choices=("none", "ram", "disk"),
        convert=none_for_none,
    )
    cache_short_side: int | None = setting(
        None,
        "--cache disk: short side of the training copies; default img_size / sqrt(crop "
        "scale), between 8/7 and 16/7 of img_size (512 for 224 at crop scale 0.08)",
        to=(DATA,),
        metavar="PX",
    )
    cache_disk_max_gb: float = setting(
        50.0,
        "--cache disk: GiB of copies written per run at most (never the disk's last 2 GiB); "
        "past it, the images without a copy are read from the originals",
        to=(DATA,),
        metavar="GB",
    )
    decode: str = setting(
        "cpu",
        "gpu: training JPEGs decoded in batches by nvjpeg and cropped, resized and flipped on "
        "the GPU (CUDA only; other formats still decode on the CPU)",
        to=(DATA,),
        choices=("cpu", "gpu"),
    )
    max_bad_fraction: float = setting(
        0.05, "abort when more than this share of the images cannot be read", to=(DATA,)
    )
    max_image_pixels: int = setting(
        50_000_000,
        "an image whose header declares more pixels than this is refused (skipped and "
        "reported) by the start-up check and the loaders; decoding one would take seconds "
        "and gigabytes",
        to=(DATA,),
        metavar="N",
    )
    image_key: str = setting(
        "path",
        "label file: the CSV column or JSONL key holding the image path (relative to the "
        "label file's folder)",
        to=(DATA,),
        metavar="KEY",
    )
    label_key: str = setting(
        "label",
        "label file: the CSV column or JSONL key holding the label",
        to=(DATA,),
        metavar="KEY",
    )
    task: str = setting(
        "auto",
        "auto: multi-label when a label file's labels are lists (JSONL) or --label-sep splits "
        "them, else multiclass; multilabel: every image carries a set of labels",
        to=(DATA,),
        choices=TASKS,
    )
    label_sep: str | None = setting(
        None,
        "CSV label file: split the label column into a set of labels at SEP (multi-label); "
        "an empty field is an image with none of the classes",
        to=(DATA,),
        metavar="SEP",
    )
    check_leakage: bool = setting(
        False,
        "find images that are in more than one split: identical files (content hash), and "
        "the same picture resized, re-encoded or slightly cropped (perceptual hash, cached "
        "with the image checks); listed in data_report.json",
        to=(DATA,),
        switch=True,
    )
    verify: str = setting(
        "header",
        "start-up check of every image, cached by path (see docs/data.md): header "
        "reads headers only; full decodes every image (in child processes a crash cannot end "
        "the run); none skips it. Images that fail later are skipped and counted either way",
        to=(DATA,),
        choices=VERIFY_MODES,
    )
