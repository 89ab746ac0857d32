"""Image decoding: any image file to a uint8 RGB tensor, with the decompression-bomb guard."""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, read_file

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
# Alpha is composited over white: most transparent images (logos, cut-outs) are meant for a
# light page, and a fixed colour keeps training and prediction identical.
BACKGROUND = 255
_ORIENTATION = 0x0112  # the EXIF tag


def _to_rgb_uint8(img: torch.Tensor) -> torch.Tensor:
    """Bring a decoded CHW tensor with 1-4 channels, uint8 or uint16, to uint8 RGB, in the
    memory layout it came in: a permuted HWC buffer (Pillow's) stays one. Copying it to CHW
    order would cost more than decoding a 500x375 JPEG, and torch's antialiased uint8 resize
    has a fast kernel for exactly that (channels-last) layout, the one torchvision's
    ``PILToTensor`` gives it."""
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
        img = img.expand(3, -1, -1).contiguous()  # three channels, not a view of one
    elif channels != 3:
        raise ValueError(f"unsupported channel count {channels}")
    return img


def _load_with_pil(data: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        return image_to_tensor(opened)


def import_decoders() -> None:
    """Import, in this process, every module ``load_image`` imports when it first runs: Pillow
    and its format plugins. Call it before loader workers are forked.

    A forked worker inherits the module locks as they were at the fork. Had another thread
    (the run's artifact writer, saving a PNG) been importing one of Pillow's plugins at that
    moment, the worker would wait forever for it at its first image.
    """
    from PIL import Image, ImageOps  # noqa: F401

    Image.init()  # every format plugin (``Image.open`` loads them on first use)


def image_to_tensor(image: Any) -> torch.Tensor:
    """A PIL image or a numpy uint8 array (``(H, W)`` or ``(H, W, C)``, C from 1 to 4) as a
    uint8 RGB tensor ``(3, H, W)``, converted as :func:`load_image` converts files: EXIF
    orientation applied, alpha composited over white, grayscale repeated.

    Raises:
        ValueError: an array of another dtype or shape.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"expected a uint8 array of shape (H, W) or (H, W, C), got {image.dtype} "
                f"{tuple(image.shape)}"
            )
        arr = torch.from_numpy(np.array(image))  # a copy: the caller's array is only read
        return _to_rgb_uint8(arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1))
    from PIL import ImageOps

    # exif_transpose and convert copy the image even when there is nothing to do.
    pil = image if image.getexif().get(_ORIENTATION, 1) == 1 else ImageOps.exif_transpose(image)
    assert pil is not None
    if pil.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 32-bit "I" images are read as 16-bit data, the common case (16-bit TIFF/PNG).
        arr = torch.from_numpy(np.asarray(pil, dtype=np.int64).copy())
        return _to_rgb_uint8(arr.clamp(0, 65535).to(torch.uint16)[None])
    has_alpha = pil.mode in ("RGBA", "LA", "PA") or "transparency" in pil.info
    mode = "RGBA" if has_alpha else "RGB"
    arr = torch.from_numpy(np.array(pil if pil.mode == mode else pil.convert(mode)))
    return _to_rgb_uint8(arr.permute(2, 0, 1))


def decode_bytes(raw: bytes, max_pixels: int | None = None) -> torch.Tensor:
    """What ``load_image(path, native=False, max_pixels=...)`` returns, from the file's bytes."""
    _refuse_bombs(raw, max_pixels)
    return _load_with_pil(raw)


def over_budget(size: tuple[int, int], max_pixels: int | None) -> str | None:
    """Why an image of ``size`` (width, height) is refused under the pixel budget
    (``max_image_pixels``), or None where it fits (or there is no budget)."""
    width, height = size
    if max_pixels is None or width * height <= max_pixels:
        return None
    return (
        f"{width}x{height} pixels, over the pixel budget of {max_pixels:,} (max_image_pixels): "
        "decoding it would take seconds and gigabytes. Downscale it, or raise "
        "--max-image-pixels"
    )


def _refuse_bombs(raw: bytes, max_pixels: int | None = None) -> None:
    """Refuse images over twice PIL's decompression-bomb limit (about 179 million pixels), and
    over ``max_pixels`` where given (``over_budget``).

    Only the header is read. Such a file (often a few KB claiming 50,000 x 50,000 pixels) would
    need gigabytes to decode; it is reported as unusable instead of crashing the run.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                size = im.size
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"too large to decode safely ({e}); downscale it, or remove it from the tree"
        ) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return  # not for this check to judge: the decoders below report it
    if (problem := over_budget(size, max_pixels)) is not None:
        raise ValueError(problem)


def load_image(
    path: str | os.PathLike[str], *, native: bool = True, max_pixels: int | None = None
) -> torch.Tensor:
    """Decode an image file to a uint8 RGB tensor ``(3, H, W)``, EXIF orientation applied.

    torchvision.io decodes JPEG, PNG and WebP; GIF, WebP with EXIF (torchvision would ignore
    its orientation) and anything torchvision rejects (BMP, TIFF, odd variants) go through
    PIL. Whatever the source: grayscale is repeated to 3 channels,
    palette and CMYK become RGB, alpha (RGBA, LA, palette transparency) is composited over
    white, and 16-bit samples are scaled (not clipped) to 8 bits.

    torchvision.io's native decoders have crashed the process (segfaults, aborts) on some
    malformed files, where Pillow raises an exception. ``native=False`` decodes with Pillow
    only (the same pixels for JPEG and PNG, ~20% slower on large JPEGs): the training loaders
    use it, since a file that passed a check can be damaged since.

    Args:
        path: the image file.
        native: use torchvision.io's decoders where they apply.
        max_pixels: the pixel budget: a larger image is refused (ValueError) from its header,
            before any pixel is decoded. The loaders hold every file to it, since a file can
            change after the start-up check passed it; None: Pillow's bomb limit only.

    Raises:
        OSError or ValueError (or another decoder error) when the file cannot be decoded.
    """
    data = read_file(os.fspath(path))
    raw = data.numpy().tobytes()
    mode = _torchvision_mode(raw) if native else None
    if mode is None:
        return decode_bytes(raw, max_pixels)
    _refuse_bombs(raw, max_pixels)
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
    if _webp_has_exif(raw):
        # torchvision applies EXIF orientation to JPEG and PNG only; PIL rotates WebP too.
        return None
    return ImageReadMode.RGB_ALPHA


def _webp_has_exif(raw: bytes) -> bool:
    """Whether a WebP file carries EXIF (the extended ``VP8X`` header's EXIF flag)."""
    return (
        raw[:4] == b"RIFF"
        and raw[8:12] == b"WEBP"
        and raw[12:16] == b"VP8X"
        and len(raw) > 20
        and bool(raw[20] & 0x08)
    )
