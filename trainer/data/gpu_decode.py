"""``decode="gpu"``: JPEGs decoded in batches by nvjpeg, then cropped, resized and flipped on
the device.

The loader's workers only read the file and draw the augmentation: the crop box comes from
the very ``v2.RandomResizedCrop`` the CPU path uses (its ``make_params``, on the image's size
read from the header) and the flip from the same coin, drawn from the same per-sample seed. So
both paths share their augmentation statistics; only where the pixels are decoded and
resampled differs. On the device the batch's JPEGs are decoded together
(``torchvision.io.decode_jpeg`` with a list), each image is turned upright by its EXIF
orientation, cropped and resized with ``v2.functional.resized_crop`` (bilinear, antialiased,
as on the CPU) and flipped; colour jitter, when asked for, runs there too.

Files nvjpeg should not get (PNG and other formats, grayscale or CMYK JPEGs) are decoded in
the worker exactly as the CPU path does and cropped there too, so a mixed folder works.
Validation keeps the CPU path: it is deterministic and a small share of the work.

Unreadable files are skipped as on the CPU path (``trainer.data.skipping``): a file the
worker cannot read or parse comes back as a ``Skipped`` marker; a JPEG the device cannot
decode is decoded with Pillow instead, and when that fails too it is left out of the batch
(one image shorter), named and counted in the data's ``BadImages`` through the loader the
batch came from. A batch whose images all failed is replaced by images decoded on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainer.data.dataset import SampleKey, split_key
from trainer.data.decode import decode_bytes, over_budget
from trainer.data.disk_cache import DiskCache
from trainer.data.skipping import Skipped
from trainer.errors import DataError
from trainer.rng import torch_seeded

log = logging.getLogger("trainer.data")

_EXIF_ORIENTATION = 0x0112


class EncodedBatch(NamedTuple):
    """A training batch still to be decoded on the device (what the loader yields).

    ``images[i]`` is a JPEG's bytes (1-d uint8) or, for a file decoded in the worker, the
    finished ``(3, S, S)`` crop. ``params[i]`` is ``(orientation, top, left, height, width,
    flip)``, the box in the upright image. ``targets`` comes second, as in plain batches.
    """

    images: list[torch.Tensor]
    targets: torch.Tensor
    params: torch.Tensor
    size: int
    jitter: v2.ColorJitter | None
    paths: Sequence[str] = ()
    keys: Sequence[Any] = ()
    # The ``SkippingLoader`` the batch came from (set by ``bind`` in the main process): it
    # records the images that fail on the device, and replaces a batch that all failed.
    source: Any = None

    def bind(self, source: Any) -> EncodedBatch:
        """This batch, reporting to ``source`` (see ``SkippingLoader``)."""
        return self._replace(source=source)


# (bytes or a finished crop, target, params, path, key): one training sample, encoded.
EncodedItem = tuple[torch.Tensor, int, torch.Tensor, str, SampleKey]


class EncodedImageDataset(Dataset[EncodedItem]):
    """Training samples as file bytes plus the augmentation drawn for them.

    Args:
        samples: the ``(path, class index)`` list.
        img_size: side of the square crops.
        crop_scale: smallest area share the random resized crop keeps.
        hflip: random horizontal flips.
        load: decodes a file the way the CPU path does (for files nvjpeg does not get).
        disk: send the device the resized copy of a large image from this disk cache
            (``--cache disk``) instead of the original: nvjpeg cannot decode at reduced size,
            so a 12-MP photo's copy is a tenth of the pixels to decode. The crop box is drawn
            on the copy, as the CPU path with the cache draws it.

    Attributes:
        skip_bad: return a ``Skipped`` marker for a file that cannot be read or decoded (for
            a loader with ``collate_skipping``) instead of raising DataError.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        img_size: int,
        *,
        crop_scale: float,
        hflip: bool,
        load: Callable[[Path], torch.Tensor],
        disk: DiskCache | None = None,
        max_pixels: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.img_size = img_size
        self.crop = v2.RandomResizedCrop(img_size, scale=(crop_scale, 1.0), antialias=True)
        self.hflip = hflip
        self.load = load
        self.disk = disk
        self.max_pixels = max_pixels  # a larger JPEG goes to ``load``, which refuses it
        self.skip_bad = False

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: SampleKey) -> EncodedItem:
        return self._item(key, on_device=True)

    def replacement(self, key: SampleKey) -> EncodedItem:
        """The sample at ``key`` decoded and cropped here, leaving the device nothing to fail
        on (what ``SkippingLoader.replace`` asks for)."""
        return self._item(key, on_device=False)

    def _item(self, key: SampleKey, on_device: bool) -> EncodedItem:
        index, seed = split_key(key)
        path, target = self.samples[index]
        try:
            copy = None if self.disk is None else self.disk.read(str(path), _whole_jpeg)
            if copy is not None:
                data = torch.frombuffer(bytearray(copy), dtype=torch.uint8)
            else:
                # A copy: read_file's own tensor failed to cross from a loader worker (its
                # queue feeder hit EBADF pickling it, torch 2.14) and the loader waited forever.
                data = read_file(str(path)).clone()
            header = _jpeg_header(data, self.max_pixels) if on_device else None
            if header is None:  # not for nvjpeg: decoded here, like the CPU path
                img = self.load(path) if copy is None else decode_bytes(copy)
                size, orientation = (int(img.shape[1]), int(img.shape[2])), 1
            else:
                size, orientation = header
        except Exception as e:
            reason = f"{type(e).__name__}: {e}".strip()
            if self.skip_bad:
                return Skipped(str(path), reason, key)  # type: ignore[return-value]
            raise DataError(
                f"Cannot decode image {path} ({reason}). Remove or replace the file, or "
                "construct the data with verify=True to skip unreadable files."
            ) from e
        # The same draw as the CPU path's RandomResizedCrop and RandomHorizontalFlip, from the
        # same seed (see ImageListDataset).
        with torch_seeded(seed) if seed is not None else contextlib.nullcontext():
            box = self.crop.make_params([torch.empty((), dtype=torch.uint8).expand(3, *size)])
            flip = bool(self.hflip and torch.rand(1) < 0.5)
        top, left, height, width = box["top"], box["left"], box["height"], box["width"]
        params = torch.tensor([orientation, top, left, height, width, int(flip)])
        if header is None:
            data = _crop(img, params, self.img_size)
            params[0] = 0  # finished: nothing left to do on the device
        return data, target, params, str(path), key

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]


def collate_encoded(
    items: list[EncodedItem], size: int, jitter: v2.ColorJitter | None = None
) -> EncodedBatch:
    """Keep the variable-length bytes as a list; stack targets and parameters.

    Args:
        items: what ``EncodedImageDataset`` returns, one per image.
        size: side of the square crops.
        jitter: the colour jitter to apply on the device, or None.
    """
    return EncodedBatch(
        [item[0] for item in items],
        torch.tensor([item[1] for item in items], dtype=torch.int64),
        torch.stack([item[2] for item in items]),
        size,
        jitter,
        [item[3] for item in items],
        [item[4] for item in items],
    )


def _whole_jpeg(raw: bytes) -> bytes:
    """``raw`` if it looks like a whole JPEG (the disk cache's copies end with their end
    marker); else ValueError, and the cache makes the copy again."""
    if raw[:2] != b"\xff\xd8" or raw[-2:] != b"\xff\xd9":
        raise ValueError("not a whole JPEG")
    return raw


def _jpeg_header(
    data: torch.Tensor, max_pixels: int | None = None
) -> tuple[tuple[int, int], int] | None:
    """``((height, width) upright, EXIF orientation)`` of a colour JPEG within PIL's limit and
    ``max_pixels``, else None (the CPU path decodes it, or refuses it with its reason)."""
    raw = data.numpy().tobytes()
    if raw[:2] != b"\xff\xd8":
        return None
    with warnings.catch_warnings():
        # Over PIL's limit: the CPU path decides (it refuses bombs with a reason).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(raw))  # reads the header only
    with im:
        if im.format != "JPEG" or im.mode != "RGB":  # grayscale and CMYK: decoded on the CPU
            return None
        width, height = im.size
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            return None  # the CPU path refuses it, with its reason
        if over_budget((width, height), max_pixels) is not None:
            return None
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    if orientation not in range(1, 9):
        orientation = 1
    if orientation >= 5:  # a quarter turn: the upright image is the other way round
        width, height = height, width
    return (height, width), orientation


def upright(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """``img`` (C, H, W) turned as its EXIF orientation says, as PIL's ``exif_transpose``."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-2, -1)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(img, -1, (-2, -1))
    if orientation == 7:
        return img.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(img, 1, (-2, -1))
    return img


def _crop(img: torch.Tensor, params: Sequence[int] | torch.Tensor, size: int) -> torch.Tensor:
    """Orientation, resized crop and flip, as ``params`` say (device-agnostic)."""
    orientation, top, left, height, width, flip = (int(v) for v in params)
    img = upright(img, orientation)
    out = F.resized_crop(img, top, left, height, width, [size, size], antialias=True)
    return out.flip(-1) if flip else out


def decode_batch(batch: EncodedBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and augment an ``EncodedBatch`` on ``device``: uint8 ``(B, 3, S, S)``, targets.

    The JPEGs go to ``decode_jpeg`` as one list (nvjpeg's batched decoder on CUDA). One file
    it rejects fails the whole call: the JPEGs are then decoded one at a time, and one that
    the device still refuses is decoded with Pillow on the CPU. A file that fails there too
    is left out of the batch and recorded by the loader the batch came from (``source``);
    a batch left empty is replaced through it. No host read of device data happens here.

    Raises:
        DataError: a file fails and the batch has no ``source`` to report it to.
    """
    params = batch.params.tolist()  # a host tensor: no device sync
    jpegs = [i for i, p in enumerate(params) if p[0] != 0]
    decoded: dict[int, torch.Tensor] = {}
    failed: list[Skipped] = []
    if jpegs:
        data = [batch.images[i] for i in jpegs]
        try:
            out: list[torch.Tensor | str] = list(
                decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
            )
        except RuntimeError as e:
            log.info("batched JPEG decode on %s failed (%s); decoding one at a time", device, e)
            out = [_decode_one(d, device) for d in data]
        for i, img in zip(jpegs, out, strict=True):
            if isinstance(img, str):
                path = batch.paths[i] if batch.paths else f"image {i} of the batch"
                failed.append(Skipped(path, img, batch.keys[i] if batch.keys else None))
            else:
                decoded[i] = img
    keep = list(range(len(params)))
    if failed:
        if batch.source is None:
            raise DataError(
                f"Cannot decode {'; '.join(f'{s.path} ({s.reason})' for s in failed)}. Remove "
                "or replace the file(s)."
            )
        batch.source.bad.record(failed)
        keep = [i for i in keep if i in decoded or params[i][0] == 0]
        if not keep:  # nothing left to train on: every rank must still take this step
            return decode_batch(batch.source.replace(failed), device)
    crops = [
        _crop(decoded[i], params[i], batch.size)
        if i in decoded
        else batch.images[i].to(device, non_blocking=True)
        for i in keep
    ]
    x = torch.stack(crops)
    if batch.jitter is not None:  # each image its own factors, as on the CPU
        x = torch.stack([batch.jitter(img) for img in x])
    targets = batch.targets[keep] if failed else batch.targets
    return x, targets.to(device, non_blocking=True)


def _decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor | str:
    """One JPEG decoded on ``device``, else with Pillow (then moved there), else why not."""
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except Exception as e:
        refused = f"{type(e).__name__}: {e}".strip()
    try:  # Pillow raises where a native decoder might crash; EXIF is left to _crop, as above
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception as e:
        return f"{type(e).__name__}: {e} (on {device}: {refused})".strip()
    log.info("a JPEG refused on %s (%s) was decoded with Pillow", device, refused)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(device, non_blocking=True)
