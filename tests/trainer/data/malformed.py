"""Malformed image files, generated: truncated, corrupted compressed data, bad chunk lengths,
wrong headers, for PNG, JPEG, GIF and WebP."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import numpy as np
from PIL import Image

FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "webp": "WEBP"}
DAMAGES = ("truncated", "corrupt_data", "bad_length", "wrong_header")


def good_bytes(ext: str, size: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, FORMATS[ext])
    return buf.getvalue()


def _flip(raw: bytes, start: int, n: int = 24) -> bytes:
    b = bytearray(raw)
    for i in range(start, min(start + n, len(b) - 2)):
        b[i] ^= 0x5A
    return bytes(b)


def _png_chunk(raw: bytes, name: bytes) -> int:
    return raw.index(name) - 4  # where the chunk's length field starts


def _corrupt(ext: str, raw: bytes) -> bytes:
    if ext == "png":
        return _flip(raw, _png_chunk(raw, b"IDAT") + 8 + 4)  # inside the zlib stream
    if ext == "jpg":
        return _flip(raw, raw.index(b"\xff\xda") + 20)  # inside the entropy-coded data
    if ext == "gif":
        return _flip(raw, raw.index(b",") + 12)  # inside the LZW data
    return _flip(raw, 40)  # webp: inside the VP8 bitstream


def _bad_length(ext: str, raw: bytes) -> bytes:
    b = bytearray(raw)
    if ext == "png":
        at = _png_chunk(raw, b"IDAT")
        b[at : at + 4] = struct.pack(">I", 0x7FFFFFF0)  # far past the end of the file
    elif ext == "jpg":
        at = raw.index(b"\xff\xdb") + 2  # the quantisation table segment's length
        b[at : at + 2] = b"\xff\xf0"
    elif ext == "gif":
        at = raw.index(b",") + 11  # the first LZW sub-block's length
        b[at] = 0xFF
    else:
        b[16:20] = struct.pack("<I", 0x7FFFFFF0)  # the VP8 chunk's size
    return bytes(b)


def damage(ext: str, how: str, raw: bytes) -> bytes:
    """``raw`` (a good file of type ``ext``) damaged as ``how`` says (one of ``DAMAGES``)."""
    makers: dict[str, Callable[[], bytes]] = {
        "truncated": lambda: raw[: len(raw) // 2],
        "corrupt_data": lambda: _corrupt(ext, raw),
        "bad_length": lambda: _bad_length(ext, raw),
        "wrong_header": lambda: b"\x00NOTANIMAGE" + raw[11:],
    }
    return makers[how]()
