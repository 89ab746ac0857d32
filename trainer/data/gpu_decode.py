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
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from trainer.data.dataset import SampleKey, split_key
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


class EncodedImageDataset(Dataset[tuple[torch.Tensor, int, torch.Tensor]]):
    """Training samples as file bytes plus the augmentation drawn for them.

    Args:
        samples: the ``(path, class index)`` list.
        img_size: side of the square crops.
        crop_scale: smallest area share the random resized crop keeps.
        hflip: random horizontal flips.
        load: decodes a file the way the CPU path does (for files nvjpeg does not get).
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        img_size: int,
        *,
        crop_scale: float,
        hflip: bool,
        load: Callable[[Path], torch.Tensor],
    ) -> None:
        self.samples = list(samples)
        self.img_size = img_size
        self.crop = v2.RandomResizedCrop(img_size, scale=(crop_scale, 1.0), antialias=True)
        self.hflip = hflip
        self.load = load

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int, torch.Tensor]:
        index, seed = split_key(key)
        path, target = self.samples[index]
        try:
            data = read_file(str(path))
            header = _jpeg_header(data)
            if header is None:  # not for nvjpeg: decoded here, like the CPU path
                img = self.load(path)
                size, orientation = (int(img.shape[1]), int(img.shape[2])), 1
            else:
                size, orientation = header
        except Exception as e:
            raise DataError(
                f"Cannot decode image {path} ({type(e).__name__}: {e}). Remove or replace the "
                "file, or construct the data with verify=True to skip unreadable files."
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
        return data, target, params

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]


def collate_encoded(
    items: list[tuple[torch.Tensor, int, torch.Tensor]],
    size: int,
    jitter: v2.ColorJitter | None = None,
) -> EncodedBatch:
    """Keep the variable-length bytes as a list; stack targets and parameters.

    Args:
        items: what ``EncodedImageDataset`` returns, one per image.
        size: side of the square crops.
        jitter: the colour jitter to apply on the device, or None.
    """
    return EncodedBatch(
        [data for data, _, _ in items],
        torch.tensor([t for _, t, _ in items], dtype=torch.int64),
        torch.stack([p for _, _, p in items]),
        size,
        jitter,
    )


def _jpeg_header(data: torch.Tensor) -> tuple[tuple[int, int], int] | None:
    """``((height, width) upright, EXIF orientation)`` of a colour JPEG, else None."""
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

    The JPEGs go to ``decode_jpeg`` as one list (nvjpeg's batched decoder on CUDA). Should
    that fail (a file nvjpeg rejects), the batch is decoded one image at a time on the CPU
    instead, with a warning. No host read of device data happens here.
    """
    params = batch.params.tolist()  # a host tensor: no device sync
    jpegs = [i for i, p in enumerate(params) if p[0] != 0]
    decoded: dict[int, torch.Tensor] = {}
    if jpegs:
        data = [batch.images[i] for i in jpegs]
        try:
            out = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError as e:
            log.warning("batched JPEG decode on %s failed (%s); decoding on the CPU", device, e)
            out = [decode_jpeg(d, mode=ImageReadMode.RGB).to(device) for d in data]
        decoded = dict(zip(jpegs, out, strict=True))
    crops = [
        _crop(decoded[i], p, batch.size) if i in decoded else img.to(device, non_blocking=True)
        for i, (img, p) in enumerate(zip(batch.images, params, strict=True))
    ]
    x = torch.stack(crops)
    if batch.jitter is not None:  # each image its own factors, as on the CPU
        x = torch.stack([batch.jitter(img) for img in x])
    return x, batch.targets.to(device, non_blocking=True)
