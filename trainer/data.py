"""ImageFolder data: scan and validate the tree, decode images, transforms, loaders, labels mapping.

The data path hands the engine **uint8** batches ``(B, 3, H, W)`` and int64 targets ``(B,)``; the
engine moves them to the device and normalises there with ``data.mean`` / ``data.std``, which keeps
host work and host-to-device traffic four times smaller than float batches.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import random
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import v2

from trainer.distributed import get_rank, get_world_size, rank_seed
from trainer.errors import ConfigError, DataError
from trainer.gpu_decode import EncodedImageDataset, collate_encoded
from trainer.io import atomic_write_json
from trainer.sampler import SAMPLER_MODES, ShardSampler, TrackingWeightedRandomSampler

logger = logging.getLogger("trainer.data")

# torchvision 0.29 deprecates torchvision.io decoding in favour of TorchCodec, which has no
# still-image decoder we can rely on yet; the warning would repeat for every worker.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

IMG_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
VAL_DIR_NAMES: tuple[str, ...] = ("val", "valid", "validation")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Validation resizes the short side to img_size / 0.875 and centre-crops img_size (the
# torchvision/timm convention, 224 -> 256).
CROP_PCT = 0.875
# Alpha is composited over white: most transparent images (logos, cut-outs) are meant for a
# light page, and a fixed colour keeps training and prediction identical.
BACKGROUND = 255

Sample = tuple[Path, int]


# --------------------------------------------------------------------------- decoding


def _is_hidden(name: str) -> bool:
    # Covers .DS_Store, AppleDouble "._x.jpg", .ipynb_checkpoints, .git and macOS zip debris.
    return name.startswith(".") or name == "__MACOSX"


def _to_rgb_uint8(img: torch.Tensor) -> torch.Tensor:
    """Bring a decoded CHW tensor with 1-4 channels, uint8 or uint16, to uint8 RGB."""
    if img.ndim == 4:  # animated GIF / multi-frame: the first frame stands for the file
        img = img[0]
    if img.dtype == torch.uint16:
        # Scale, not clip: 65535 -> 255, 32768 -> 128 (round half up).
        img = ((img.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    elif img.dtype != torch.uint8:
        raise ValueError(f"unsupported pixel type {img.dtype}")
    channels = img.shape[0]
    if channels in (2, 4):
        color, alpha = img[:-1].to(torch.int32), img[-1:].to(torch.int32)
        if bool((alpha == 255).all()):
            img = img[:-1]
        else:
            mixed = color * alpha + BACKGROUND * (255 - alpha)
            img = ((mixed + 127) // 255).to(torch.uint8)
        channels -= 1
    if channels == 1:
        img = img.expand(3, -1, -1)
    elif channels != 3:
        raise ValueError(f"unsupported channel count {channels}")
    return img.contiguous()


def _load_with_pil(data: bytes) -> torch.Tensor:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
        pil = ImageOps.exif_transpose(opened)
        assert pil is not None
        if pil.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
            # 32-bit "I" images are read as 16-bit data, the common case (16-bit TIFF/PNG).
            arr = torch.from_numpy(np.asarray(pil, dtype=np.int64).copy())
            return _to_rgb_uint8(arr.clamp(0, 65535).to(torch.uint16)[None])
        has_alpha = pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info
        pil = pil.convert("RGBA" if has_alpha else "RGB")
        arr = torch.from_numpy(np.asarray(pil).copy())
    return _to_rgb_uint8(arr.permute(2, 0, 1))


def _refuse_bombs(raw: bytes) -> None:
    """Refuse images over twice PIL's decompression-bomb limit (about 179 million pixels).

    Only the header is read. Such a file (often a few KB claiming 50,000 x 50,000 pixels) would
    need gigabytes to decode; it is reported as unusable instead of crashing the run.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.open(io.BytesIO(raw)).close()
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"too large to decode safely ({e}); downscale it, or remove it from the tree"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass  # not for this check to judge: the decoders below report it


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor ``(3, H, W)``, EXIF orientation applied.

    torchvision.io decodes JPEG, PNG, GIF and WebP; anything it rejects (BMP, TIFF, odd
    variants) goes through PIL. Whatever the source: grayscale is repeated to 3 channels,
    palette and CMYK become RGB, alpha (RGBA, LA, palette transparency) is composited over
    white, and 16-bit samples are scaled (not clipped) to 8 bits.

    Args:
        path: the image file.

    Raises:
        OSError or ValueError (or another decoder error) when the file cannot be decoded.
    """
    data = read_file(os.fspath(path))
    raw = data.numpy().tobytes()
    _refuse_bombs(raw)
    mode = _torchvision_mode(raw)
    if mode is None:
        return _load_with_pil(raw)
    try:
        img = decode_image(data, mode=mode, apply_exif_orientation=True)
    except Exception:
        return _load_with_pil(raw)
    return _to_rgb_uint8(img)


def _torchvision_mode(raw: bytes) -> ImageReadMode | None:
    """The mode to ask torchvision for, or None where PIL must decode the file."""
    if raw[:2] == b"\xff\xd8":
        # JPEG has no alpha and its decoder refuses RGB_ALPHA; RGB also converts CMYK.
        return ImageReadMode.RGB
    if raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 25:
        color_type = raw[25]
        idat = raw.find(b"IDAT")
        # torchvision 0.29 scrambles palette PNGs read as RGB_ALPHA, and tRNS transparency
        # needs compositing: PIL handles both.
        if color_type == 3 or raw.find(b"tRNS", 0, idat) >= 0:
            return None
        return ImageReadMode.RGB_ALPHA if color_type in (4, 6) else ImageReadMode.RGB
    if raw[:4] == b"GIF8":
        # GIF transparency is a palette index torchvision ignores.
        return None
    return ImageReadMode.RGB_ALPHA


# --------------------------------------------------------------------------- transforms


def resize_size(img_size: int) -> int:
    """Short side validation resizes to before the centre crop (256 for 224)."""
    return int(img_size / CROP_PCT)


def val_transform(img_size: int) -> v2.Compose:
    """Validation/test preprocessing on uint8 tensors: resize short side, centre crop."""
    return v2.Compose([v2.Resize(resize_size(img_size), antialias=True), v2.CenterCrop(img_size)])


def train_transform(
    img_size: int, *, crop_scale: float = 0.08, hflip: bool = True, color_jitter: float = 0.0
) -> v2.Compose:
    """Training augmentation on uint8 tensors: random resized crop, flip, optional jitter."""
    ops: list[Callable[..., Any]] = [
        v2.RandomResizedCrop(img_size, scale=(crop_scale, 1.0), antialias=True)
    ]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        ops.append(jitter_transform(color_jitter))
    return v2.Compose(ops)


def jitter_transform(strength: float) -> v2.ColorJitter:
    """Brightness, contrast and saturation by ``strength``; hue by ``min(0.1, strength / 4)``."""
    s = strength
    return v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.1, s / 4))


def eval_preprocess(img: torch.Tensor, img_size: int) -> torch.Tensor:
    """Apply exactly the validation preprocessing to one uint8 ``(3, H, W)`` image.

    ``tools/predict.py`` uses this so ONNX predictions see what validation saw.
    """
    out = val_transform(img_size)(img)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    return out


# --------------------------------------------------------------------------- dataset


class ImageListDataset(Dataset[tuple[torch.Tensor, int]]):
    """``(path, target)`` samples decoded on demand (or from a RAM cache) and transformed.

    Args:
        samples: the ``(path, class index)`` list.
        transform: applied to the uint8 ``(3, H, W)`` image.
        cache: decoded images aligned with ``samples``, or None to read from disk.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[torch.Tensor], torch.Tensor],
        cache: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[index]
        if self.cache is not None:
            img = self.cache[index]
        else:
            try:
                img = load_image(path)
            except Exception as e:
                raise DataError(
                    f"Cannot decode image {path} ({type(e).__name__}: {e}). Remove or replace "
                    "the file, or construct the data with verify=True to skip unreadable files."
                ) from e
        return self.transform(img), target

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]


# --------------------------------------------------------------------------- scanning


def _walk_images(folder: Path, seen: set[Path]) -> tuple[list[Path], list[Path]]:
    """Images (and ignored non-image files) anywhere under ``folder``, sorted.

    Follows symlinked folders, but each real folder only once (``seen`` holds resolved paths),
    so a link loop or two links to the same folder never count images twice.
    """
    images: list[Path] = []
    ignored: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = Path(dirpath).resolve()
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if _is_hidden(name):
                continue
            p = Path(dirpath) / name
            (images if p.suffix.lower() in IMG_EXTENSIONS else ignored).append(p)
    return sorted(images), ignored


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


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

    Verification (``verify=True``) decodes every image once, on threads, before training.
    Unreadable files are dropped, listed in ``bad_files`` and logged; more than
    ``max_bad_fraction`` of them is a DataError.

    Loaders yield ``(images, targets)``: uint8 ``(B, 3, img_size, img_size)`` (not normalised;
    normalise on the device with ``mean``/``std``) and int64 ``(B,)``.

    Args:
        root: the tree's root folder.
        img_size: side of the square images the model sees.
        batch_size: batch size of every loader.
        workers: DataLoader worker processes; None means ``min(8, os.cpu_count())``.
        val_fraction: share of each class held out for val when the root is not split.
        seed: seeds the split, the shuffling and the sampler.
        crop_scale: smallest area share RandomResizedCrop keeps.
        hflip: random horizontal flips in training.
        color_jitter: brightness/contrast/saturation strength (hue is ``min(0.1, s/4)``); 0 = off.
        sampler: "none" (plain shuffling), "balanced" (classes drawn equally often) or "manual"
            (drawn by ``class_weights``).
        class_weights: class name -> sampling weight, for ``sampler="manual"``; unlisted
            classes weigh 1.0.
        cache: "ram" keeps decoded images, pre-resized to the validation resize size, in memory
            (up to ``cache_max_bytes``; beyond that it warns and reads from disk); None reads
            from disk every epoch. Training crops are then taken from the pre-resized image.
        cache_max_bytes: memory the RAM cache may use.
        max_bad_fraction: largest share of unreadable images tolerated.
        verify: decode every image once up front.
        decode: "cpu" decodes and augments training images in the loader's workers; "gpu"
            has the workers only read the files and draw the crops, and the engine decode
            the JPEGs in batches on its device (nvjpeg on CUDA) and crop, resize and flip
            them there (see ``trainer.gpu_decode``). Training batches are then
            ``EncodedBatch`` objects, which ``Engine`` decodes. Validation is unchanged.

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
        crop_scale: float = 0.08,
        hflip: bool = True,
        color_jitter: float = 0.0,
        sampler: str = "none",
        class_weights: dict[str, float] | None = None,
        cache: str | None = None,
        cache_max_bytes: int = 4 * 1024**3,
        max_bad_fraction: float = 0.05,
        verify: bool = True,
        decode: str = "cpu",
    ) -> None:
        self._check_args(
            img_size,
            batch_size,
            workers,
            val_fraction,
            crop_scale,
            color_jitter,
            sampler,
            class_weights,
            cache,
            max_bad_fraction,
            decode,
        )
        self.root = Path(root).expanduser()
        self.img_size = img_size
        self.batch_size = batch_size
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.crop_scale = crop_scale
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.cache_max_bytes = cache_max_bytes
        self.max_bad_fraction = max_bad_fraction
        self.decode = decode

        self.bad_files: list[tuple[Path, str]] = []
        self.ignored_files: list[Path] = []
        self.train_samples: list[Sample] = []
        self.val_samples: list[Sample] = []
        self.test_samples: list[Sample] = []
        self.classes: list[str] = []
        self._scan()
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(self.classes)}
        self.idx_to_class: dict[int, str] = dict(enumerate(self.classes))
        self.num_classes = len(self.classes)
        weights_by_idx = self._class_weights_by_index(class_weights)

        self._cache: dict[str, list[torch.Tensor]] | None = None
        if verify or cache == "ram":
            self._verify_and_cache(keep=cache == "ram")
        self._check_counts()
        self.class_counts: dict[str, list[int]] = {
            split: self._count(samples) for split, samples in self._splits().items()
        }

        # Even unweighted runs draw through the tracking sampler (a seeded permutation per
        # epoch): it records what was drawn, and a resumed run draws the same order. Under DDP
        # that permutation is exactly torch's DistributedSampler's, so it stands in for it.
        self.sampler: TrackingWeightedRandomSampler = TrackingWeightedRandomSampler(
            [t for _, t in self.train_samples],
            self.num_classes,
            mode=sampler,
            class_weights=weights_by_idx,
            seed=seed,
            num_replicas=get_world_size(),
            rank=get_rank(),
        )

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check_args(
        img_size: int,
        batch_size: int,
        workers: int | None,
        val_fraction: float,
        crop_scale: float,
        color_jitter: float,
        sampler: str,
        class_weights: dict[str, float] | None,
        cache: str | None,
        max_bad_fraction: float,
        decode: str,
    ) -> None:
        problems = []
        if img_size < 1:
            problems.append(f"img_size must be >= 1, got {img_size}")
        if batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {batch_size}")
        if workers is not None and workers < 0:
            problems.append(f"workers must be >= 0, got {workers}")
        if not 0 <= val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0 < crop_scale <= 1:
            problems.append(f"crop_scale must be in (0, 1], got {crop_scale}")
        if color_jitter < 0:
            problems.append(f"color_jitter must be >= 0, got {color_jitter}")
        if sampler not in SAMPLER_MODES:
            problems.append(f"sampler must be one of {', '.join(SAMPLER_MODES)}, got {sampler!r}")
        if sampler == "manual" and not class_weights:
            problems.append("sampler='manual' needs class_weights (class name -> weight)")
        if cache not in (None, "ram"):
            problems.append(f"cache must be None or 'ram', got {cache!r}")
        if not 0 <= max_bad_fraction <= 1:
            problems.append(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        if decode not in ("cpu", "gpu"):
            problems.append(f"decode must be 'cpu' or 'gpu', got {decode!r}")
        if decode == "gpu" and cache == "ram":
            problems.append(
                "decode='gpu' reads JPEG files for the device to decode, while cache='ram' "
                "keeps images decoded in memory: use one or the other"
            )
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    def _class_weights_by_index(
        self, class_weights: dict[str, float] | None
    ) -> dict[int, float] | None:
        if not class_weights:
            return None
        unknown = sorted(set(class_weights) - set(self.classes))
        if unknown:
            raise DataError(
                f"class_weights name classes that are not in {self.root}: "
                f"{', '.join(map(repr, unknown))}. Known classes: {', '.join(self.classes)}. "
                "Fix the names (they are the class folder names)."
            )
        bad = {k: v for k, v in class_weights.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ConfigError(f"class_weights must be finite and >= 0; got {bad}.")
        return {self.class_to_idx[k]: float(v) for k, v in class_weights.items()}

    # ------------------------------------------------------------------ scan

    def _scan(self) -> None:
        root = self.root
        if not root.exists():
            raise DataError(
                f"Data folder {root} does not exist. Pass the folder that holds train/ and val/ "
                "(or one folder per class) with --data, or omit --data to use the demo dataset."
            )
        if not root.is_dir():
            raise DataError(
                f"Data path {root} is a file, not a folder. Pass the folder that holds train/ "
                "and val/ (or one folder per class); archives must be extracted first."
            )
        top = {p.name: p for p in _subdirs(root)}
        if not top:
            raise DataError(
                f"Data folder {root} holds no folders. Expected train/<class>/<images> and "
                "val/<class>/<images>, or one folder of images per class."
            )
        train_dir = top.get("train")
        val_dir = next((top[n] for n in VAL_DIR_NAMES if n in top), None)
        test_dir = top.get("test")
        seen: set[Path] = set()
        if train_dir is None and val_dir is None and test_dir is None:
            self._scan_unsplit(list(top.values()), seen)
            return
        if train_dir is None:
            other = val_dir.name if val_dir is not None else "test"
            raise DataError(
                f"{root} has a {other}/ folder but no train/ folder. "
                "Add train/<class>/<images> next to it, or put the class folders directly in "
                f"{root} to have them split automatically."
            )
        if val_dir is None:
            raise DataError(
                f"{root} has train/ but no val/ folder (valid/ and validation/ also work). Add "
                f"val/<class>/<images>, or move the class folders from {train_dir} up into "
                f"{root} to have them split into train/val automatically."
            )
        train = self._scan_split(train_dir, seen)
        self.classes = sorted(train)
        if len(self.classes) < 2:
            raise DataError(
                f"{train_dir} has {len(self.classes)} class folder(s) "
                f"({', '.join(self.classes) or 'none'}); a classifier needs at least two. "
                "Put each class's images in its own folder: train/<class>/<images>."
            )
        self._check_not_empty(train, train_dir)
        to_idx = {c: i for i, c in enumerate(self.classes)}
        self.train_samples = [(p, to_idx[c]) for c in self.classes for p in train[c]]
        for split_dir, attr in ((val_dir, "val_samples"), (test_dir, "test_samples")):
            if split_dir is None:
                continue
            found = self._scan_split(split_dir, seen)
            unknown = sorted(set(found) - set(self.classes))
            if unknown:
                raise DataError(
                    f"{split_dir} has class folder(s) {', '.join(map(repr, unknown))} that "
                    f"{train_dir} does not have. Train classes: {', '.join(self.classes)}. "
                    "Rename or remove them, or add training images for them."
                )
            missing = [c for c in self.classes if not found.get(c)]
            if missing:
                logger.warning(
                    "%s has no images for class(es) %s; their %s accuracy will be undefined.",
                    split_dir,
                    ", ".join(missing),
                    split_dir.name,
                )
            setattr(self, attr, [(p, to_idx[c]) for c in self.classes for p in found.get(c, [])])

    def _scan_split(self, split_dir: Path, seen: set[Path]) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {}
        for entry in sorted(split_dir.iterdir()):
            if _is_hidden(entry.name):
                continue
            if entry.is_dir():
                images, ignored = _walk_images(entry, seen)
                found[entry.name] = images
                self.ignored_files += ignored
            else:
                # A stray file next to the class folders has no class; report, don't guess.
                self.ignored_files.append(entry)
        return found

    def _scan_unsplit(self, class_dirs: list[Path], seen: set[Path]) -> None:
        found: dict[str, list[Path]] = {}
        for d in class_dirs:
            images, ignored = _walk_images(d, seen)
            found[d.name] = images
            self.ignored_files += ignored
        self.ignored_files += sorted(
            p for p in self.root.iterdir() if p.is_file() and not _is_hidden(p.name)
        )
        self.classes = sorted(found)
        if len(self.classes) < 2:
            raise DataError(
                f"{self.root} has one class folder ({self.classes[0]}); a classifier needs at "
                "least two. Put each class's images in its own folder, or pass the folder "
                "above them."
            )
        self._check_not_empty(found, self.root)
        rng = random.Random(self.seed)
        for idx, c in enumerate(self.classes):
            files = list(found[c])
            rng.shuffle(files)
            n = len(files)
            n_val = 0
            if n >= 2 and self.val_fraction > 0:
                n_val = min(n - 1, max(1, round(n * self.val_fraction)))
            self.val_samples += [(p, idx) for p in sorted(files[:n_val])]
            self.train_samples += [(p, idx) for p in sorted(files[n_val:])]
        logger.info(
            "%s has no train/val folders: split %d images into %d train / %d val "
            "(val_fraction=%s, seed=%d).",
            self.root,
            sum(map(len, found.values())),
            len(self.train_samples),
            len(self.val_samples),
            self.val_fraction,
            self.seed,
        )

    def _check_not_empty(self, found: dict[str, list[Path]], where: Path) -> None:
        empty = [c for c in sorted(found) if not found[c]]
        if empty:
            raise DataError(
                f"Class folder(s) {', '.join(map(repr, empty))} in {where} hold no images "
                f"(looked for {', '.join(sorted(IMG_EXTENSIONS))}, any case, in subfolders "
                "too). Add images or remove the empty folder(s)."
            )

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

    # ------------------------------------------------------------------ verify / cache

    def _splits(self) -> dict[str, list[Sample]]:
        return {"train": self.train_samples, "val": self.val_samples, "test": self.test_samples}

    def _count(self, samples: Sequence[Sample]) -> list[int]:
        counts = [0] * len(self.classes)
        for _, t in samples:
            counts[t] += 1
        return counts

    def _verify_and_cache(self, *, keep: bool) -> None:
        splits = self._splits()
        paths = [p for samples in splits.values() for p, _ in samples]
        if not paths:
            return
        short_side = resize_size(self.img_size)
        resize = v2.Resize(short_side, antialias=True)
        budget = [self.cache_max_bytes] if keep else [0]

        def check(path: Path) -> tuple[torch.Tensor | None, str | None]:
            try:
                img = load_image(path)
            except Exception as e:
                return None, f"{type(e).__name__}: {e}".strip()
            if not keep or budget[0] < 0:
                return None, None
            if min(img.shape[-2:]) > short_side:
                img = resize(img)
            # A rough running budget; a race between threads costs at most a few images.
            budget[0] -= img.numel()
            return img, None

        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency, but only for the bar

            def tqdm(x: Any, **_: Any) -> Any:
                return x

        threads = max(1, min(16, self.workers or 1, len(paths)))
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(
                tqdm(
                    pool.map(check, paths),
                    total=len(paths),
                    desc="checking images",
                    unit="img",
                    disable=not sys.stderr.isatty(),
                    leave=False,
                )
            )
        bad = {p: r for p, (_, r) in zip(paths, results, strict=True) if r is not None}
        self.bad_files = [(p, bad[p]) for p in paths if p in bad]
        if bad:
            shown = "; ".join(f"{p} ({r})" for p, r in self.bad_files[:5])
            fraction = len(bad) / len(paths)
            if fraction > self.max_bad_fraction:
                raise DataError(
                    f"{len(bad)} of {len(paths)} images under {self.root} ({fraction:.1%}) "
                    f"cannot be decoded, more than max_bad_fraction={self.max_bad_fraction}. "
                    f"First ones: {shown}. Remove or replace the broken files, or raise "
                    "--max-bad-fraction to skip them."
                )
            logger.warning(
                "Skipping %d unreadable image(s) of %d under %s: %s%s",
                len(bad),
                len(paths),
                self.root,
                shown,
                " ..." if len(bad) > 5 else "",
            )

        images = iter(results)
        cache: dict[str, list[torch.Tensor]] = {}
        for name, samples in splits.items():
            kept = [(s, next(images)) for s in samples]
            samples[:] = [s for s, (_, r) in kept if r is None]
            cache[name] = [img for _, (img, r) in kept if r is None and img is not None]
        if keep:
            if budget[0] < 0:
                warnings.warn(
                    f"The decoded images of {self.root} need more than cache_max_bytes="
                    f"{_human(self.cache_max_bytes)}; not caching, reading from disk instead. "
                    "Raise cache_max_bytes or use a smaller img_size to cache.",
                    stacklevel=3,
                )
                logger.warning(
                    "RAM cache does not fit in %s; reading from disk.", _human(self.cache_max_bytes)
                )
            else:
                self._cache = cache
                logger.info(
                    "Cached %d images in RAM (%s).",
                    len(paths) - len(bad),
                    _human(self.cache_max_bytes - budget[0]),
                )

    @property
    def cached(self) -> bool:
        """Whether images are served from the RAM cache."""
        return self._cache is not None

    # ------------------------------------------------------------------ loaders

    def _dataset(
        self, split: str, transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> ImageListDataset:
        cache = None if self._cache is None else self._cache[split]
        return ImageListDataset(self._splits()[split], transform, cache)

    def _loader(self, dataset: Dataset[Any], **kwargs: Any) -> DataLoader[Any]:
        kwargs.setdefault("collate_fn", default_collate)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.workers > 0,
            drop_last=False,
            **kwargs,
        )

    def train_dataset(self) -> ImageListDataset:
        """The training samples with the training augmentation."""
        return self._dataset(
            "train",
            train_transform(
                self.img_size,
                crop_scale=self.crop_scale,
                hflip=self.hflip,
                color_jitter=self.color_jitter,
            ),
        )

    def train_loader(self) -> DataLoader[Any]:
        """Shuffled (or sampler-driven) training batches: uint8 images, int64 targets.

        Build it once per fit: each call makes a new loader (and, with workers, a new pool).
        With a sampler, call ``data.sampler.set_epoch(epoch)`` before each epoch. Under a
        torch.distributed process group the loader yields this rank's shard of the epoch's
        global draw (see ``TrackingWeightedRandomSampler``).
        """
        # The world is read here, not only at construction, so data built before the process
        # group came up (e.g. by a notebook, before Engine joined it) still shards.
        self.sampler.set_replicas(get_world_size(), get_rank())
        # Seeding the loader's generator also seeds the workers' augmentation streams; each
        # rank gets its own, so ranks do not apply the same crops in lockstep.
        g = torch.Generator().manual_seed(rank_seed(self.seed))
        if self.decode == "gpu":
            encoded = EncodedImageDataset(
                self._splits()["train"],
                self.img_size,
                crop_scale=self.crop_scale,
                hflip=self.hflip,
                load=load_image,
            )
            jitter = jitter_transform(self.color_jitter) if self.color_jitter > 0 else None
            collate = functools.partial(collate_encoded, size=self.img_size, jitter=jitter)
            return self._loader(encoded, sampler=self.sampler, generator=g, collate_fn=collate)
        return self._loader(self.train_dataset(), sampler=self.sampler, generator=g)

    def val_dataset(self) -> ImageListDataset:
        """The validation samples, in file order, with the validation preprocessing."""
        return self._dataset("val", val_transform(self.img_size))

    def val_loader(self) -> DataLoader[Any]:
        """Validation batches in file order, with the validation preprocessing.

        Under a process group, rank ``r`` gets images ``r, r + world_size, ...`` (no padding, so
        the engine's summed metrics count every image exactly once).
        """
        return self._eval_loader(self.val_dataset())

    def test_loader(self) -> DataLoader[Any] | None:
        """Test batches like validation, or None when the tree has no test/ split."""
        if not self.test_samples:
            return None
        return self._eval_loader(self._dataset("test", val_transform(self.img_size)))

    def _eval_loader(self, dataset: ImageListDataset) -> DataLoader[Any]:
        shard = ShardSampler(len(dataset), num_replicas=get_world_size(), rank=get_rank())
        return self._loader(dataset, sampler=shard)

    # ------------------------------------------------------------------ labels mapping

    def labels_mapping(self) -> dict[str, Any]:
        """What ``tools/predict.py`` needs to map outputs to names and preprocess like val."""
        return {
            "class_to_idx": dict(self.class_to_idx),
            "idx_to_class": {str(i): c for i, c in self.idx_to_class.items()},
            "image_size": self.img_size,
            "resize_size": resize_size(self.img_size),
            "interpolation": "bilinear",
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
        }

    def save_labels_mapping(self, path: str | os.PathLike[str]) -> None:
        """Write ``labels_mapping()`` as JSON, atomically."""
        atomic_write_json(path, self.labels_mapping())

    def report(self) -> dict[str, Any]:
        """What the scan found, for ``data_report.json``: counts, unusable and ignored files."""
        return {
            "root": str(self.root),
            "classes": list(self.classes),
            "class_counts": {k: list(v) for k, v in self.class_counts.items()},
            "bad_files": [{"path": str(p), "reason": r} for p, r in self.bad_files],
            "ignored_files": [str(p) for p in self.ignored_files],
        }

    def summary(self) -> str:
        """A few lines on classes and split sizes, for the start of a run."""
        lines = [f"data: {self.root} ({self.num_classes} classes)"]
        for split, counts in self.class_counts.items():
            if sum(counts):
                lines.append(
                    f"  {split}: {sum(counts)} images, per class min {min(counts)} "
                    f"max {max(counts)}"
                )
        if self.bad_files:
            lines.append(f"  skipped {len(self.bad_files)} unreadable file(s)")
        if self.ignored_files:
            lines.append(f"  ignored {len(self.ignored_files)} non-image file(s)")
        return "\n".join(lines)
