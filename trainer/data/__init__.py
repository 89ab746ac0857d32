"""The path from files to batches.

Modules:
    decode      image files to uint8 RGB tensors (torchvision.io, PIL fallback), the bomb guard
    transforms  the validation recipe (EvalResize: crop_pct, crop or squash), test-time
                augmentation modes and the training augmentation, on uint8 tensors
    augment     the extra augmentation (policies, erasing, degradations, MixUp/CutMix settings)
    mix         MixUp/CutMix on the device, with soft targets
    pipelines   your own train/val transforms (a --transforms file), checked against the mapping
    scan        the tree walk and split detection: a folder tree to ``(path, class)`` samples
    labelfile   CSV and JSONL label files to the same samples; picks the reader for ``--data``
    leakage     byte-identical images in more than one split
    preflight   the start-up check (headers, or full decodes), parallel, crash-contained
    check_cache the check results on disk, keyed by path and file version
    scan_cache  the tree scan on disk, trusted while every folder lists the same
    cache_store the one file format of those two caches, validated on read
    cache       optionally keep every image decoded in RAM
    samples     SampleArray: samples in numpy arrays that loader workers share
    skipping    images that fail in a loader: skipped, counted, reported
    dataset     ImageListDataset: samples served as transformed uint8 images
    folder      ImageFolderData: the above put together, with loaders and the labels mapping
    sampler     the tracking weighted sampler (resumable, DDP-aware) and the eval shard sampler
    gpu_decode  ``decode="gpu"``: JPEGs decoded in batches on the device
    demo        the built-in demo dataset of drawn shapes
"""

from trainer.data.augment import Augment
from trainer.data.dataset import ImageListDataset
from trainer.data.decode import BACKGROUND, IMG_EXTENSIONS, image_to_tensor, load_image
from trainer.data.folder import ImageFolderData
from trainer.data.mix import BatchMix
from trainer.data.reduced import load_preprocessed
from trainer.data.scan import VAL_DIR_NAMES, Sample
from trainer.data.transforms import (
    CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalResize,
    eval_preprocess,
    jitter_transform,
    resize_size,
    train_transform,
    val_transform,
)

__all__ = [
    "BACKGROUND",
    "CROP_PCT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "VAL_DIR_NAMES",
    "Augment",
    "BatchMix",
    "EvalResize",
    "ImageFolderData",
    "ImageListDataset",
    "Sample",
    "eval_preprocess",
    "image_to_tensor",
    "jitter_transform",
    "load_image",
    "load_preprocessed",
    "resize_size",
    "train_transform",
    "val_transform",
]
