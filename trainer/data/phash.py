"""A 64-bit perceptual hash (pHash) of an image, and Hamming distances between such hashes.

The same picture re-encoded, resized or slightly cropped keeps its coarse structure, which
the lowest frequencies of its cosine transform describe: the image in grayscale, resized to
32x32, its 2-D DCT-II, the 8x8 block of lowest frequencies without the DC row and column
(the mean brightness carries no shape), and one bit per coefficient, set when it is above the
block's median. Two copies of one picture differ in a few bits; two different pictures in
about half of them. This is the classic pHash (Zauner, 2010; ``imagehash.phash`` keeps the DC
row and column): a few lines of numpy, so no new dependency.

Example:
    >>> h = phash("a.jpg")  # doctest: +SKIP
    >>> distances(np.array([h], np.uint64), np.array([h ^ 0b101], np.uint64))  # doctest: +SKIP
    array([[2]])
"""

from __future__ import annotations

import functools
import os

import numpy as np

HASH_SIZE = 32  # the side the image is resized to before the transform
BITS = 64


@functools.cache
def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: ``D @ x`` is the transform of the column ``x``."""
    k = np.arange(n)[:, None]
    d = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2 / n)
    d[0] /= np.sqrt(2)
    return d


def phash_pixels(gray: np.ndarray) -> int:
    """The hash of a ``(HASH_SIZE, HASH_SIZE)`` grayscale image (any numeric dtype)."""
    d = _dct_matrix(HASH_SIZE)
    freq = d @ gray.astype(np.float64) @ d.T
    low = freq[1:9, 1:9].ravel()
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])


def phash(path: str | os.PathLike[str]) -> int:
    """The perceptual hash of the image file at ``path`` (as the loaders see it: EXIF
    orientation applied). Raises what Pillow raises for a file it cannot decode."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        # A JPEG is decoded at the largest DCT reduction that keeps 2x the hash's side:
        # a 12-MP photo costs a 1/8 decode, and 32x32 hardly sees the difference.
        im.draft("RGB", (2 * HASH_SIZE, 2 * HASH_SIZE))
        im = ImageOps.exif_transpose(im).convert("L")
        small = im.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX)
    return phash_pixels(np.asarray(small))


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each element of a uint64 array."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    as_bytes = x[..., None].view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1).sum(-1)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between the uint64 hashes ``a`` (rows) and ``b`` (columns)."""
    return popcount(a[:, None] ^ b[None, :]).astype(np.int64)


def descriptor(path: str | os.PathLike[str]) -> np.ndarray:
    """The low frequencies of the image at ``path`` in colour, as a unit vector: the 8x8 DCT
    block of each of Y, Cb and Cr at 32x32, without their DC terms.

    The hash's bits keep only signs against a median, so two different pictures of one shape
    and place (a drawn circle in two colours; one writer's two 4s) can share most of them.
    These coefficients keep the amplitudes and the colour: the cosine between two copies of
    one picture stays near 1 (resized or re-encoded: above 0.997 on the demo and digits sets),
    where such look-alikes stay lower. See ``tools/benchmarks/near_duplicates.py``.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (2 * HASH_SIZE, 2 * HASH_SIZE))
        im = ImageOps.exif_transpose(im).convert("RGB").convert("YCbCr")
        small = im.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BOX)
    d = _dct_matrix(HASH_SIZE)
    pixels = np.asarray(small, np.float64)
    parts = [(d @ pixels[..., c] @ d.T)[:8, :8].ravel()[1:] for c in range(3)]
    v = np.concatenate(parts)
    return v / max(float(np.linalg.norm(v)), 1e-9)
