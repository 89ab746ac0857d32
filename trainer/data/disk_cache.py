"""The disk cache (``cache="disk"``): a resized JPEG copy of each large image, made once.

For trees that do not fit the RAM cache. The first time a loader reads an image whose short
side is larger than the cache's, it decodes it (at reduced JPEG size where it can, see
``trainer.data.reduced``), resizes the short side to the cache's and stores the copy as a
JPEG (quality 90, as cameras and FFCV write them) under the cache folder; from then on the
loaders read the copy instead. Images no larger than that are read as they are.

- **Where**: ``$IMGTRAINER_IMAGE_CACHE``, else ``$IMGTRAINER_CACHE/images``, else
  ``~/.cache/imgtrainer/images``, one file per copy (``<2 hex>/<32 hex>.jpg``); never in the
  user's data. An image no larger than its copy would be gets a marker entry instead.
- **Key**: a hash of the file's absolute path, size, mtime, inode and ctime (what the start-up
  check keys on, see ``trainer.data.check_cache``) and the short side: a changed file gets a
  new copy. The old copy stays until the folder is removed.
- **Short side**: training copies at ``default_short_side`` unless set; validation and test
  copies at the validation resize size, so validation's resize leaves them as they are.
- **Same pixels every time**: a copy is decoded from its JPEG bytes whether it was just made
  or read back, so the first epoch, later epochs and a resumed run see the same images and
  draw the same crops. The crop box is drawn on the copy.
- **Workers**: each copy is written to a temp name in its folder and renamed, so a reader
  never sees half a file and two processes making the same copy leave one.
- **Size**: at most ``max_bytes`` written per run and never closer than ``RESERVE`` to a full
  disk; past that, images without a copy are read from the originals, with one warning.
- **Failures**: a copy that cannot be read or decoded is made again from the original; any
  other failure of the cache (an unwritable folder, a full disk) turns it off for the run,
  with one warning, and the originals are read as without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sized
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torchvision.transforms import v2

from trainer.data.decode import over_budget
from trainer.data.reduced import ReducedDecode
from trainer.data.transforms import resize_size
from trainer.io import human_bytes

logger = logging.getLogger("trainer.data")

T = TypeVar("T")
QUALITY = 90
RESERVE = 2 * 1024**3  # free bytes the cache never takes: the disk is shared
# What a copy costs on disk, an upper estimate for photos (JPEG quality 90, 4:2:0): the copies
# of the 12-MP photo trees measured 0.16 (792 px short side) to 0.29 (256 px) bytes per pixel.
BYTES_PER_PIXEL = 0.3
_VERSION = 1  # part of every key: bump it when a copy's content changes
# The entry of an image read as it is (no larger than a copy): later reads then skip the
# original's header, which telling it apart costs. Not empty, which is what a write cut
# short by a crash can leave: such an entry is made again.
ORIGINAL = b"original"


def default_cache_dir() -> Path:
    """``$IMGTRAINER_IMAGE_CACHE``, else ``$IMGTRAINER_CACHE/images``, else
    ``~/.cache/imgtrainer/images``."""
    if os.environ.get("IMGTRAINER_IMAGE_CACHE"):
        return Path(os.environ["IMGTRAINER_IMAGE_CACHE"]).expanduser()
    base = os.environ.get("IMGTRAINER_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "imgtrainer") / "images"


def default_short_side(img_size: int, crop_scale: float) -> int:
    """The training copies' short side: ``img_size / sqrt(crop_scale)``, within the validation
    resize size (256 for 224) and twice that.

    ``img_size / sqrt(crop_scale)`` keeps the smallest crops of a square image at full
    resolution. With ImageNet's ``crop_scale=0.08`` that is 792 px for 224, which the cap
    brings to 512: a 12-MP photo then trains like an ImageNet image (most are 375-500 px on
    their short side, their small crops upsampled too), at about half the disk space and
    read time of 792 px copies (70 against 134 KB a copy on the 12-MP photo trees).
    """
    low = resize_size(img_size)
    return max(low, min(2 * low, round(img_size / crop_scale**0.5)))


class _Shared:
    """State shared by the loader's processes (forked or spawned): bytes written this run,
    and whether the cache is full or off. Whoever flips a flag warns, so once per run."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.written = multiprocessing.Value("q", 0)
        self.full = multiprocessing.Value("b", 0)
        self.off = multiprocessing.Value("b", 0)

    def flip(self, flag: Any) -> bool:
        """Set ``flag``; True for the one caller that set it."""
        with flag.get_lock():
            was = flag.value
            flag.value = 1
        return not was

    def reserve(self, n: int) -> bool:
        """Count ``n`` more bytes if they fit the budget."""
        with self.written.get_lock():
            if self.written.value + n > self.budget:
                return False
            self.written.value += n
            return True


class DiskCache:
    """Resized JPEG copies of one split's images at ``short_side`` (see the module docstring).

    Build it with ``open_disk_cache``; ``with_short_side`` gives the cache of another split,
    sharing the folder, the budget and the flags.
    """

    def __init__(
        self, folder: Path, short_side: int, shared: _Shared, max_pixels: int | None = None
    ) -> None:
        self.folder = folder
        self.short_side = short_side
        self.shared = shared
        self.max_pixels = max_pixels  # a larger original gets no copy: its decode refuses it
        shrink = ReducedDecode.of(v2.Compose([v2.Resize(short_side, antialias=True)]))
        assert shrink is not None
        self._shrink = shrink

    def for_split(self, split: str, eval_side: int) -> DiskCache:
        """This cache for training; for validation and test, the one of copies at
        ``eval_side``, the short side validation resizes to (``EvalResize.resize_size``), so
        that its resize leaves them as they are."""
        if split == "train":
            return self
        return DiskCache(self.folder, eval_side, self.shared, self.max_pixels)

    def entry(self, path: str) -> Path:
        """Where the copy of the current version of ``path`` lives."""
        st = os.stat(path)
        key = "\0".join(
            map(str, (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino,
                      st.st_ctime_ns, self.short_side, _VERSION))
        )  # fmt: skip
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.folder / digest[:2] / f"{digest}.jpg"

    def read(self, path: str, use: Callable[[bytes], T]) -> T | None:
        """``use(the copy's JPEG bytes)``, the copy made first if missing or unreadable; or
        None when the original is to be read instead (small, the cache full or off).

        ``use`` decodes the bytes, and must fail (raise) on a damaged copy before it draws
        anything from torch's generator: the copy is then made again and ``use`` called on
        it, so the draws are those of an intact copy.

        Raises:
            what the original's decode raises (the caller skips the image as without a cache).
        """
        if self.shared.off.value:
            return None
        try:
            entry = self.entry(path)
        except OSError:
            return None  # the original's decode reports it
        try:
            raw: bytes | None = entry.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as e:
            self._turn_off(f"cannot read {self.folder} ({e})")
            return None
        if raw == ORIGINAL:
            return None
        if raw is not None:
            try:
                return use(raw)
            except Exception as e:
                logger.debug("disk cache copy %s of %s is damaged (%s); making it again",
                             entry, path, e)  # fmt: skip
        if self.shared.full.value:
            return None
        raw = self._make(path)
        self._store(entry, raw)
        return None if raw == ORIGINAL else use(raw)

    def _make(self, path: str) -> bytes:
        """The copy's JPEG bytes, or ``ORIGINAL`` for an image no larger than the copy would
        be, or whose header the cache cannot read or that is over the pixel budget (its
        decode reports it)."""
        from PIL import Image

        with open(path, "rb") as f:
            source = f.read()
        try:
            with Image.open(io.BytesIO(source)) as img:
                small = min(img.size) <= self.short_side
                refused = over_budget(img.size, self.max_pixels) is not None
        except Exception:
            return ORIGINAL  # not for the cache to judge: the original's decode reports it
        if small or refused:
            return ORIGINAL
        img = self._shrink.from_bytes(source)
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=QUALITY)
        return buf.getvalue()

    def _store(self, entry: Path, raw: bytes) -> None:
        if not self.shared.reserve(len(raw)):
            if self.shared.flip(self.shared.full):
                logger.warning(
                    "The disk cache in %s reached its limit (%s this run); the images not "
                    "cached yet are read from the originals. Raise --cache-disk-max-gb, free "
                    "space, or lower --cache-short-side.",
                    self.folder, human_bytes(self.shared.budget),
                )  # fmt: skip
            return
        tmp = None
        try:
            entry.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, entry)  # readers see the whole copy or none
        except OSError as e:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._turn_off(f"cannot write to {self.folder} ({e})")

    def _turn_off(self, why: str) -> None:
        if self.shared.flip(self.shared.off):
            logger.warning(
                "Disk cache off for the rest of the run: %s. Reading the original images "
                "instead. Set IMGTRAINER_CACHE to a writable folder with free space.",
                why,
            )


def decode_copy(raw: bytes) -> torch.Tensor:
    """A copy's pixels: uint8 ``(3, H, W)``, a channels-last view of Pillow's decode.

    Decoded whole, before the transform draws anything: a damaged copy fails here, and is
    made again with the generator untouched (``ReducedDecode`` draws the crop box first). The
    copies are small (a 224 px crop of a 512 px copy is rarely halved), so a reduced decode
    would gain little; torch's uint8 antialiased resize has its fast kernel for this layout.

    Raises:
        what Pillow raises for bytes that are not a whole JPEG.
    """
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        if img.format != "JPEG" or img.mode != "RGB":
            raise ValueError(f"not a copy: {img.format} {img.mode}")
        arr = np.array(img)
    return torch.from_numpy(arr).permute(2, 0, 1)


def open_disk_cache(
    folder: str | os.PathLike[str] | None,
    short_side: int,
    max_gb: float,
    splits: Mapping[str, Sized],
    root: Path,
    max_pixels: int | None = None,
) -> DiskCache | None:
    """The disk cache in ``folder`` (default ``default_cache_dir()``) for training copies at
    ``short_side``, or None, with one warning, when the folder cannot be written.

    Warns when the copies of the images of ``splits`` may not fit: ``max_gb`` GiB or the
    disk's free space (less ``RESERVE``), whichever is lower, bounds what is written.
    An original over ``max_pixels`` gets no copy (its decode refuses it).
    """
    folder = default_cache_dir() if folder is None else Path(folder)
    max_bytes = int(max_gb * 1024**3)
    images = sum(map(len, splits.values()))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as e:
        _warn(
            f"--cache disk cannot write its folder {folder} ({e}); reading the original "
            f"images of {root} instead. Set IMGTRAINER_CACHE to a writable folder."
        )
        return None
    budget = max(0, min(max_bytes, free - RESERVE))
    need = int(images * short_side * short_side * 4 / 3 * BYTES_PER_PIXEL)
    if need > budget:
        _warn(
            f"The disk cache may need up to {human_bytes(need)} for the {images} images of {root} "
            f"at a {short_side} px short side, more than it may use in {folder} "
            f"({human_bytes(budget)}: --cache-disk-max-gb {max_gb:g}, "
            f"{human_bytes(free)} free less {human_bytes(RESERVE)} kept free). The images past that "
            "are read from the originals each epoch. Free space, raise --cache-disk-max-gb, "
            "lower --cache-short-side, or set IMGTRAINER_CACHE to a larger disk."
        )
    return DiskCache(folder, short_side, _Shared(budget), max_pixels)


def _warn(message: str) -> None:
    # A log record only: tools/train.py prints it once (a warnings.warn too printed it twice),
    # and without logging set up Python's last-resort handler still shows it.
    logger.warning("%s", message)
