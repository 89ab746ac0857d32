"""ImageFolderData: an ImageFolder tree, validated, with its transforms, loaders and labels mapping.

The data path hands the engine **uint8** batches ``(B, 3, H, W)`` and int64 targets ``(B,)``; the
engine moves them to the device and normalises there with ``data.mean`` / ``data.std``, which keeps
host work and host-to-device traffic four times smaller than float batches.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from trainer.data import folder_report, label_sets
from trainer.data.augment import Augment
from trainer.data.cache import verify_and_cache
from trainer.data.dataset import ImageListDataset
from trainer.data.decode import import_decoders, load_image
from trainer.data.disk_cache import default_short_side, open_disk_cache
from trainer.data.gpu_decode import EncodedImageDataset, collate_encoded
from trainer.data.labelfile import scan_source
from trainer.data.leakage import check_leakage as find_leakage
from trainer.data.mix import BatchMix
from trainer.data.options import check_augment, check_options, class_weights_by_index
from trainer.data.pipelines import Transform, check_train_transform, check_val_transform
from trainer.data.preflight import DEFAULT_MAX_PIXELS, available_cpus, check_splits
from trainer.data.sampler import SeededDraw, ShardSampler, TrackingWeightedRandomSampler
from trainer.data.samples import SampleArray
from trainer.data.scan_cache import as_sample_array
from trainer.data.skipping import BadImages, SkippingLoader, collate_skipping
from trainer.data.transforms import (
    CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalResize,
    jitter_transform,
    train_transform,
)
from trainer.data.workers import LoaderPools
from trainer.distributed import get_rank, get_world_size, rank_seed
from trainer.errors import DataError
from trainer.io import atomic_write_json

logger = logging.getLogger("trainer.data")


class ImageFolderData:
    """An ImageFolder tree, validated, with its transforms, loaders and labels mapping.

    Layout: ``root/train/<class>/...`` and ``root/val/<class>/...`` (``valid/`` and
    ``validation/`` also accepted), optional ``root/test/<class>/...``. A root holding only class
    folders is split into train/val per class with ``val_fraction`` and ``seed`` (deterministic;
    every class keeps at least one training image, and a class with a single image goes to train
    only). Classes are the sorted folder names of train; their indices follow that order.

    Files: an image is any file with extension .jpg .jpeg .png .bmp .gif .webp .tif .tiff (any
    case). Images in nested subfolders of a class folder belong to that class. Hidden entries
    (names starting with ``.``, e.g. ``.DS_Store``, ``._x.jpg``, ``.ipynb_checkpoints``) and
    ``__MACOSX`` are skipped; other non-image files are listed in ``ignored_files``. Symlinked
    folders are followed once each. Files are only ever read, never modified.

    Label files: ``root`` may instead be a ``.csv`` or ``.jsonl`` file of ``(image path, label[,
    split])`` rows (see ``trainer.data.labelfile``): the same samples, checks and loaders follow.

    Verification (``verify="header"``, the default) reads every image's header before
    training, in parallel processes, and caches the results by path and file version (see
    ``trainer.data.preflight``); ``verify="full"`` decodes every image too. Unusable files
    are dropped, listed in ``bad_files`` and logged. An image that still fails to decode in a
    loader is skipped (its batch is one image shorter), logged once and listed in
    ``bad_images.skipped``; a training batch whose images all failed is replaced by the next
    samples that decode, so DDP ranks take the same steps (see ``trainer.data.skipping``).
    More than ``max_bad_fraction`` of unusable images, at start or later, is a DataError.

    Loaders yield ``(images, targets)``: uint8 ``(B, 3, img_size, img_size)`` (not normalised;
    normalise on the device with ``mean``/``std``) and int64 ``(B,)``.

    Args:
        root: the tree's root folder, or a ``.csv`` / ``.jsonl`` label file.
        img_size: side of the square images the model sees.
        batch_size: batch size of every loader.
        workers: DataLoader worker processes; None means ``min(8, os.cpu_count())``.
        val_fraction: share of each class held out for val when the root is not split.
        seed: seeds the split, the sampler and each image's augmentation (see ``SeededDraw``).
        crop_scale: smallest area share RandomResizedCrop keeps; None: the task's default
            (``label_sets.TASK_DATA_DEFAULTS``), 0.08, or 1.0 (the whole image) for
            multi-label data. The value in use is ``self.crop_scale``.
        crop_pct: validation and test resize the short side to ``int(img_size / crop_pct)``,
            then centre-crop ``img_size`` (timm's name); with ``val_resize="squash"``, ignored.
        val_resize: "crop" (as ``crop_pct`` says) or "squash": the whole image resized to
            ``img_size`` square, no crop. None: the task's default, "crop", or "squash" for
            multi-label data, unless ``crop_pct`` is not the default (then "crop"). The
            value in use is ``self.val_resize``; both are in ``eval_resize`` and
            ``labels_mapping()``.
        hflip: random horizontal flips in training.
        color_jitter: brightness/contrast/saturation strength (hue is ``min(0.1, s/4)``); 0 = off.
        sampler: "none" (plain shuffling), "balanced" (classes drawn equally often) or "manual"
            (drawn by ``class_weights``).
        class_weights: class name -> sampling weight, for ``sampler="manual"``; unlisted
            classes weigh 1.0.
        cache: "ram" keeps decoded images, pre-resized to the validation resize size, in memory
            (up to ``cache_max_bytes``; beyond that it warns and reads from disk); None reads
            from disk every epoch. Training crops are then taken from the pre-resized image.
            "disk" stores a resized JPEG copy of each large image the first time it is read,
            and reads the copies after (``trainer.data.disk_cache``).
        cache_max_bytes: memory the RAM cache may use.
        cache_short_side, cache_disk_max_gb, disk_cache_dir: the disk cache's training copies'
            short side, GiB it writes per run at most, folder (None: defaults, see there).
        max_bad_fraction: largest share of unreadable images tolerated.
        verify: "header" checks every header up front, "full" decodes every image too (in
            child processes, which a decoder crash cannot take the run with), "none" nothing.
        max_image_pixels: an image whose header declares more pixels is refused by the
            start-up check (in ``bad_files``) and, should a file change after it, skipped by
            the loaders; see ``preflight.DEFAULT_MAX_PIXELS``.
        check_cache_dir: where the start-up caches live; default ``default_cache_dir()``.
        decode: "cpu" decodes and augments training images in the loader's workers; "gpu"
            has the workers only read the files and draw the crops, and the engine decode
            the JPEGs in batches on its device (nvjpeg on CUDA) and crop, resize and flip
            them there (see ``trainer.data.gpu_decode``). Training batches are then
            ``EncodedBatch`` objects, which ``Engine`` decodes. Validation is unchanged. The
            per-image options of ``augment`` and a custom ``train_transform`` need the
            decoded image in the worker, so they are refused with "gpu"; MixUp/CutMix work.
        image_key: a label file's column (CSV) or key (JSONL) holding the image path.
        label_key: a label file's column or key holding the label.
        task: "auto", "multiclass" or "multilabel": a label file whose labels are lists (or
            split by ``label_sep``) is multi-label under "auto" (``trainer.data.label_sets``):
            targets are then multi-hot float rows ``(C,)``, ``task`` says which.
        label_sep: splits a CSV label file's label column into a label set, e.g. ";".
        check_leakage: look for images in more than one split: identical files in ``leaks``,
            the same picture resized, re-encoded or cropped in ``near_duplicates`` (see
            ``trainer.data.leakage``); both in the report, and logged.
        augment: more training augmentation (``trainer.data.augment.Augment``): policies,
            random erasing, degradations, and MixUp/CutMix, which ``batch_mix`` hands the
            engine to apply on the device.
        train_transform: your own training pipeline, replacing the built-in one (crop_scale,
            hflip, color_jitter and augment's per-image options then do nothing): a callable
            from a uint8 ``(3, H, W)`` image to a uint8 ``(3, img_size, img_size)`` one,
            drawing its randomness from torch's generator (it runs under each image's seed).
        val_transform: your own validation/test pipeline. It must compute what
            ``labels_mapping.json`` describes (``crop_pct`` and ``val_resize``), which is all
            exported models are preprocessed from: checked on probe images, else ConfigError.

    Example:
        >>> data = ImageFolderData("flowers", img_size=128, batch_size=32)  # doctest: +SKIP
        >>> images, targets = next(iter(data.train_loader()))  # uint8, int64
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        img_size: int = 224,
        batch_size: int = 64,
        workers: int | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        crop_scale: float | None = None,
        crop_pct: float = CROP_PCT,
        val_resize: str | None = None,
        hflip: bool = True,
        color_jitter: float = 0.0,
        sampler: str = "none",
        class_weights: dict[str, float] | None = None,
        cache: str | None = None,
        cache_max_bytes: int = 4 * 1024**3,
        max_bad_fraction: float = 0.05,
        verify: bool | str = "header",
        decode: str = "cpu",
        image_key: str = "path",
        label_key: str = "label",
        check_leakage: bool = False,
        augment: Augment | None = None,
        train_transform: Transform | None = None,
        val_transform: Transform | None = None,
        check_cache_dir: str | os.PathLike[str] | None = None,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        cache_short_side: int | None = None,
        cache_disk_max_gb: float = 50.0,
        disk_cache_dir: str | os.PathLike[str] | None = None,
        task: str = "auto",
        label_sep: str | None = None,
    ) -> None:
        self.augment = augment or Augment()
        if isinstance(verify, bool):
            verify = "header" if verify else "none"
        check_options(
            img_size, batch_size, workers, val_fraction, crop_scale, color_jitter, sampler,
            class_weights, cache, max_bad_fraction, decode, verify, max_image_pixels,
            cache_short_side, cache_disk_max_gb, crop_pct=crop_pct, val_resize=val_resize,
        )  # fmt: skip
        check_augment(self.augment, decode, train_transform)
        if train_transform is not None:
            check_train_transform(train_transform, img_size)
        self.train_transform, self.val_transform = train_transform, val_transform
        self.root = Path(root).expanduser()
        self.img_size = img_size
        self.batch_size = batch_size
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.cache_max_bytes = cache_max_bytes
        self.max_bad_fraction = max_bad_fraction
        self.decode = decode
        self.verify = verify
        self.max_image_pixels = max_image_pixels

        scan, missing = scan_source(
            self.root,
            val_fraction=val_fraction,
            seed=seed,
            image_key=image_key,
            label_key=label_key,
            max_bad_fraction=max_bad_fraction,
            cache_dir=None if check_cache_dir is None else Path(check_cache_dir),
            task=task,
            label_sep=label_sep,
        )
        self.classes: list[str] = scan.classes
        # Multi-label: targets index these (K, C) multi-hot rows (trainer.data.label_sets).
        self.label_table, self.task = label_sets.label_table_of(scan, decode)
        # The task known, its defaults fill the settings left unset (see crop_scale, val_resize).
        defaults = label_sets.TASK_DATA_DEFAULTS[self.task]
        self.crop_scale: float = defaults["crop_scale"] if crop_scale is None else crop_scale
        if val_resize is None:
            val_resize = defaults["val_resize"] if crop_pct == CROP_PCT else "crop"
        self.val_resize: str = val_resize
        # How validation, test and prediction resize (labels_mapping.json records it).
        self.eval_resize = EvalResize.of(img_size, crop_pct, val_resize)
        if val_transform is not None:  # before the images are checked: a quick refusal
            check_val_transform(val_transform, self.eval_resize)
        # No Python object per sample: see SampleArray.
        self.train_samples: SampleArray = as_sample_array(scan.train)
        self.val_samples: SampleArray = as_sample_array(scan.val)
        self.test_samples: SampleArray = as_sample_array(scan.test)
        self.ignored_files: list[Path] = scan.ignored_files
        self.skipped_links: list[tuple[Path, str]] = scan.skipped_links
        self.bad_files: list[tuple[Path, str]] = missing  # missing, or not regular files
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.idx_to_class: dict[int, str] = dict(enumerate(self.classes))
        self.num_classes = len(self.classes)
        weights_by_idx = class_weights_by_index(class_weights, self.classes, self.root)
        # The engine applies it to each training batch on the device (trainer.data.mix).
        self.batch_mix: BatchMix | None = self.augment.batch_mix(self.num_classes, seed)

        total = sum(map(len, self._splits().values())) + len(missing)
        hashes = None  # with check_leakage: the perceptual hashes of the start-up check
        if verify != "none":
            kept, unusable, hashes = check_splits(
                self._splits(),
                mode=verify,
                # The loaders are not running yet: the check may use every core.
                processes=0 if self.workers == 0 else available_cpus(),
                cache_key=str(self.root.resolve()),
                cache_dir=None if check_cache_dir is None else Path(check_cache_dir),
                max_bad_fraction=max_bad_fraction,
                root=self.root,
                known_bad=missing,
                max_pixels=max_image_pixels,
                phash=check_leakage,
                # scan_source has just seen every sample listed as a regular file: a usable
                # file's cached result stands without a stat (the loaders skip one that fails).
                listed=True,
            )
            self.train_samples, self.val_samples = kept["train"], kept["val"]
            self.test_samples = kept["test"]
            self.bad_files = missing + unusable
        self._cache: dict[str, list[torch.Tensor]] | None = None
        self._pools = LoaderPools()  # the loaders' worker processes, ended by close()
        if cache == "ram":
            # Called from __init__ itself: its over-budget warning names the caller's line.
            checked = verify_and_cache(
                self._splits(),
                root=self.root,
                img_size=self.eval_resize,
                keep=cache == "ram",
                cache_max_bytes=cache_max_bytes,
                max_bad_fraction=max_bad_fraction,
                workers=self.workers,
                native=False,  # see _dataset
                max_pixels=max_image_pixels,
                known_bad=self.bad_files,  # they count together against max_bad_fraction
            )
            self.train_samples = as_sample_array(checked.samples["train"])
            self.val_samples = as_sample_array(checked.samples["val"])
            self.test_samples = as_sample_array(checked.samples["test"])
            self.bad_files += checked.bad_files
            self._cache = checked.images
        side = cache_short_side or default_short_side(img_size, self.crop_scale)
        self._disk = None if cache != "disk" else open_disk_cache(
            disk_cache_dir, side, cache_disk_max_gb, self._splits(), self.root,
            max_pixels=max_image_pixels)  # fmt: skip
        self.bad_images = BadImages(self.root, total, self.bad_files, max_bad_fraction)
        self._check_counts()
        self.leaks: list[dict[str, Any]] | None = None  # None: not checked
        self.near_duplicates: list[dict[str, Any]] | None = None
        if check_leakage:
            self.leaks, self.near_duplicates = find_leakage(self._splits(), hashes, self.workers)
        self.class_counts: dict[str, list[int]] = {
            split: self._count(samples) for split, samples in self._splits().items()
        }

        # Even unweighted runs draw through the tracking sampler (a seeded permutation per
        # epoch): it records what was drawn, and a resumed run draws the same order. Under DDP
        # that permutation is exactly torch's DistributedSampler's, so it stands in for it.
        self.sampler: TrackingWeightedRandomSampler = label_sets.tracking_sampler(
            self.train_samples.targets, self.num_classes, self.label_table, mode=sampler,
            class_weights=weights_by_idx, seed=seed, num_replicas=get_world_size(), rank=get_rank()
        )  # fmt: skip

    # ------------------------------------------------------------------ counts

    def _check_counts(self) -> None:
        counts = self._count(self.train_samples)
        emptied = [self.classes[i] for i, n in enumerate(counts) if n == 0]
        if emptied:
            raise DataError(
                f"After skipping unreadable files, class(es) {', '.join(emptied)} in {self.root} "
                "have no training image left. Replace the broken files listed in the log."
            )
        single = [self.classes[i] for i, n in enumerate(counts) if n == 1]
        if single:
            logger.warning(
                "Class(es) %s have a single training image; the model can hardly learn them.",
                ", ".join(single),
            )

    def _splits(self) -> dict[str, SampleArray]:
        return {"train": self.train_samples, "val": self.val_samples, "test": self.test_samples}

    def _count(self, samples: SampleArray) -> list[int]:
        if self.label_table is not None:  # images carrying each label
            return label_sets.label_counts(samples.targets, self.label_table)
        return [int(n) for n in np.bincount(samples.targets, minlength=len(self.classes))]

    @property
    def cached(self) -> bool:
        """Whether images are served from the RAM cache."""
        return self._cache is not None

    # ------------------------------------------------------------------ loaders

    def _dataset(
        self,
        split: str,
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        skip_bad: bool = False,
    ) -> ImageListDataset:
        cache = None if self._cache is None else self._cache[split]
        samples = self._splits()[split]
        # Pillow raises on a malformed file (skipped) where a native decoder can crash the
        # worker. Reduced JPEG decoding: built-in pipelines only (a user's sees the full image).
        own = self.train_transform if split == "train" else self.val_transform
        disk = None if self._disk is None else self._disk.for_split(split, self.eval_resize.resize_size)
        return ImageListDataset(samples, transform, cache, skip_bad=skip_bad, native=False,
                                reduced=own is None, disk=disk, label_table=self.label_table,
                                max_pixels=self.max_image_pixels)  # fmt: skip

    def _skipping_loader(
        self,
        dataset: ImageListDataset | EncodedImageDataset,
        collate: Callable[[list[Any]], Any] = default_collate,
        replace_empty: bool = False,
        **kwargs: Any,
    ) -> SkippingLoader:
        """A loader that skips (and records in ``bad_images``) images it cannot decode and names
        each batch's samples (``indices``); ``replace_empty`` (training): see ``SkippingLoader``."""
        dataset.skip_bad = True
        collate_fn = functools.partial(collate_skipping, collate=collate)
        loader = self._loader(dataset, collate_fn=collate_fn, **kwargs)
        return SkippingLoader(loader, self.bad_images, replace_empty, indexed=True)

    def _loader(self, dataset: Dataset[Any], **kwargs: Any) -> DataLoader[Any]:
        if self.workers > 0:
            import_decoders()  # before any worker is forked (see there)
        kwargs.setdefault("collate_fn", default_collate)
        # The loader draws its workers' base seed from this generator, not from the global
        # one: persistent workers draw it at the first iter() only, which a resumed run
        # reaches at another epoch, and the global stream (dropout) must not shift by it.
        kwargs.setdefault("generator", torch.Generator().manual_seed(rank_seed(self.seed)))
        pin = torch.cuda.is_available()
        return self._pools.loader(dataset, batch_size=self.batch_size, num_workers=self.workers,
                                  pin_memory=pin, **kwargs)  # fmt: skip

    def close(self) -> None:
        """End the loaders' worker processes (also done at exit); a new iteration restarts them."""
        self._pools.close()

    def train_dataset(self) -> ImageListDataset:
        """The training samples with the training augmentation."""
        return self._dataset("train", self.train_pipeline())

    def train_pipeline(self) -> Transform:
        """The per-image training transform: ``train_transform`` if given, else the built-in."""
        if self.train_transform is not None:
            return self.train_transform
        return train_transform(
            self.img_size,
            crop_scale=self.crop_scale,
            hflip=self.hflip,
            color_jitter=self.color_jitter,
            augment=self.augment,
        )

    def val_pipeline(self) -> Transform:
        """The validation/test transform: ``val_transform`` if given, else the built-in."""
        if self.val_transform is not None:
            return self.val_transform
        return self.eval_resize.transform()

    def train_loader(self) -> DataLoader[Any] | SkippingLoader:
        """Shuffled (or sampler-driven) training batches: uint8 images, int64 targets.

        Build it once per fit: each call makes a new loader (and, with workers, a new pool).
        With a sampler, call ``data.sampler.set_epoch(epoch)`` before each epoch. Under a
        torch.distributed process group the loader yields this rank's shard of the epoch's
        global draw (see ``TrackingWeightedRandomSampler``).
        """
        # The world is read here, not only at construction, so data built before the process
        # group came up (e.g. by a notebook, before Engine joined it) still shards.
        self.sampler.set_replicas(get_world_size(), get_rank())
        # Each image's augmentation is seeded by (seed, epoch, its position in the epoch's
        # draw), not by the workers' streams: a resumed run, whose workers are new, draws
        # exactly what the straight run drew, with any number of workers (see SeededDraw).
        sampler = SeededDraw(self.sampler)
        if self.decode == "gpu":
            encoded = EncodedImageDataset(
                self._splits()["train"],
                self.img_size,
                crop_scale=self.crop_scale,
                hflip=self.hflip,
                # With Pillow only, as the CPU path (see _dataset).
                load=functools.partial(load_image, native=False, max_pixels=self.max_image_pixels),
                disk=self._disk, max_pixels=self.max_image_pixels)  # fmt: skip
            jitter = jitter_transform(self.color_jitter) if self.color_jitter > 0 else None
            collate = functools.partial(collate_encoded, size=self.img_size, jitter=jitter)
            return self._skipping_loader(encoded, collate, replace_empty=True, sampler=sampler)
        # A batch whose images all failed is replaced: DDP ranks must take the same steps.
        return self._skipping_loader(self.train_dataset(), replace_empty=True, sampler=sampler)

    def val_dataset(self) -> ImageListDataset:
        """The validation samples, in file order, with the validation preprocessing."""
        return self._dataset("val", self.val_pipeline())

    def val_loader(self) -> DataLoader[Any] | SkippingLoader:
        """Validation batches in file order, with the validation preprocessing.

        Under a process group, rank ``r`` gets images ``r, r + world_size, ...`` (no padding, so
        the engine's summed metrics count every image exactly once).
        """
        return self._eval_loader(self.val_dataset())

    def test_loader(self) -> DataLoader[Any] | SkippingLoader | None:
        """Test batches like validation, or None when the tree has no test/ split."""
        if not self.test_samples:
            return None
        return self._eval_loader(self._dataset("test", self.val_pipeline()))

    def _eval_loader(self, dataset: ImageListDataset) -> SkippingLoader:
        shard = ShardSampler(len(dataset), num_replicas=get_world_size(), rank=get_rank())
        return self._skipping_loader(dataset, sampler=shard)

    # ------------------------------------------------------------------ labels mapping

    def labels_mapping(self) -> dict[str, Any]:
        """What ``tools/predict.py`` needs to map outputs to names and preprocess like val."""
        return {
            "class_to_idx": dict(self.class_to_idx),
            "idx_to_class": {str(i): c for i, c in self.idx_to_class.items()},
            "num_classes": self.num_classes,
            **self.eval_resize.mapping(),  # image_size, crop_pct, resize_mode, ...
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            **({} if self.label_table is None else label_sets.multilabel_mapping(self.num_classes)),
        }

    def save_labels_mapping(self, path: str | os.PathLike[str]) -> None:
        """Write ``labels_mapping()`` as JSON, atomically."""
        atomic_write_json(path, self.labels_mapping())

    def report(self) -> dict[str, Any]:
        """What the scan found, for ``data_report.json``: counts, unusable and ignored files,
        leaks (``trainer.data.folder_report``)."""
        return folder_report.report(self)

    def write_report(self, path: str | os.PathLike[str]) -> None:
        """Write ``report()`` to ``path`` as JSON, and again after each loader pass that
        skipped an image."""
        atomic_write_json(path, self.report())
        self.bad_images.on_change = lambda: atomic_write_json(path, self.report())

    def summary(self) -> str:
        """A few lines on classes and split sizes, for the start of a run."""
        return folder_report.summary(self)
