"""Reduced-size JPEG decoding: decode only the pixels a built-in pipeline's first step needs.

libjpeg decodes a JPEG at 1/2, 1/4 or 1/8 of its size (DCT scaling, Pillow's ``Image.draft``)
several times faster than at full size, and the resize after it has fewer pixels to read. Both
built-in pipelines start with a step that shrinks the image: ``RandomResizedCrop`` (training)
and ``Resize`` of the short side (validation and test). ``ReducedDecode`` runs that step on a
JPEG decoded at the largest reduction that still leaves it at least the pixels its output needs:

- training: the crop box is drawn on the full-size, EXIF-oriented coordinates that the header
  gives, by the transform's own ``make_params`` on torch's generator, so every box (and every
  later draw of the pipeline) is the one the plain pipeline draws. The reduction is the largest
  at which the box still spans the output size; the box, scaled to the reduced image, is then
  resized at sub-pixel precision (Pillow's ``resize(box=...)``, antialiased bilinear as
  torchvision's).
- validation: the largest reduction whose short side stays at or above the resize size (for
  a squash, ``Resize((h, w))``: whose sides stay at or above ``h`` and ``w``).

EXIF orientation: the box is mapped to the stored orientation, resized there, and the small
result is transposed. Other formats, a box too small to reduce, and a JPEG that the reduced
decode refuses are decoded at full size and go through the step exactly as before.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from trainer.data.decode import decode_bytes, image_to_tensor, over_budget
from trainer.data.transforms import EvalResize, as_resize, val_transform

REDUCTIONS = (8, 4, 2)  # what libjpeg's DCT scaling offers, largest first
_ORIENTATION = 0x0112


def _stored_point(orientation: int, x: float, y: float, w: int, h: int) -> tuple[float, float]:
    """Where the displayed point ``(x, y)`` lies in the stored image of size ``(w, h)``."""
    return {
        2: (w - x, y),
        3: (w - x, h - y),
        4: (x, h - y),
        5: (y, x),
        6: (y, h - x),
        7: (w - y, h - x),
        8: (w - y, x),
    }.get(orientation, (x, y))


def _transpose_method(orientation: int) -> Any:
    from PIL import Image

    T = Image.Transpose
    return {
        2: T.FLIP_LEFT_RIGHT,
        3: T.ROTATE_180,
        4: T.FLIP_TOP_BOTTOM,
        5: T.TRANSPOSE,
        6: T.ROTATE_270,
        7: T.TRANSVERSE,
        8: T.ROTATE_90,
    }.get(orientation)


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(h, w)`` that ``v2.Resize(short)`` gives an image of ``(height, width)``."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


class ReducedDecode:
    """Decode a file and apply the first step of ``transform`` to it, at reduced JPEG size
    where the step allows (see the module docstring); ``rest`` is what remains to apply.

    Build it with ``ReducedDecode.of(transform)``, which returns None for a pipeline whose
    first step is not a bilinear, antialiased ``RandomResizedCrop``, ``Resize(int)`` or
    ``Resize((h, w))``.
    Call it under the generator the pipeline would draw from. An image over ``max_pixels``
    is refused (ValueError) as ``load_image`` refuses it.
    """

    def __init__(
        self,
        first: v2.RandomResizedCrop | v2.Resize,
        rest: Callable[..., Any],
        max_pixels: int | None = None,
    ) -> None:
        self.first = first
        self.rest = rest
        self.max_pixels = max_pixels

    @classmethod
    def of(cls, transform: Any, max_pixels: int | None = None) -> ReducedDecode | None:
        """The reduced decoder of ``transform``, or None where it does not apply."""
        if not isinstance(transform, v2.Compose) or not transform.transforms:
            return None
        first, *rest = transform.transforms
        resize = type(first) is v2.Resize and len(first.size) in (1, 2) and first.max_size is None
        if not (resize or type(first) is v2.RandomResizedCrop):
            return None
        bilinear = first.interpolation in ("bilinear", InterpolationMode.BILINEAR)
        if not bilinear or first.antialias is not True:
            return None
        return cls(first, v2.Compose(rest) if rest else v2.Identity(), max_pixels)

    def __call__(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """The first step's output for the image at ``path``, a uint8 ``(3, h, w)`` tensor.

        Raises:
            what ``load_image(path, native=False)`` raises for a file it cannot decode.
        """
        with open(path, "rb") as f:
            return self.from_bytes(f.read())

    def from_bytes(self, raw: bytes) -> torch.Tensor:
        """What ``self(path)`` returns, from the file's bytes."""
        if raw[:2] != b"\xff\xd8":  # not a JPEG
            return self.first(decode_bytes(raw, self.max_pixels))
        from PIL import Image

        try:
            pil = Image.open(io.BytesIO(raw))
        except Exception:  # reports it as a full decode would
            return self.first(decode_bytes(raw, self.max_pixels))
        with pil:
            if (problem := over_budget(pil.size, self.max_pixels)) is not None:
                raise ValueError(problem)
            orientation = int(pil.getexif().get(_ORIENTATION, 1))
            w, h = pil.size
            shown = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            params, scale = self.plan(*shown)
            if scale == 1:
                return self._full(image_to_tensor(pil), params)
            try:
                return self._reduced(pil, orientation, shown, params, scale)
            except Exception:
                return self._full(decode_bytes(raw, self.max_pixels), params)

    def plan(self, width: int, height: int) -> tuple[dict[str, Any] | None, int]:
        """``(the crop box drawn, or None for Resize; the reduction)`` for a displayed size."""
        if isinstance(self.first, v2.RandomResizedCrop):
            # A stand-in of the image's shape, with no pixels: the same draws as on the image.
            proxy = torch.empty((1, 1, 1), dtype=torch.uint8).expand(3, height, width)
            params = self.first.make_params([proxy])
            out_h, out_w = self.first.size
            for s in REDUCTIONS:
                if params["height"] / s >= out_h and params["width"] / s >= out_w:
                    return params, s
            return params, 1
        if len(self.first.size) == 2:  # squash: both sides to a fixed size
            out_h, out_w = self.first.size
            return None, next((s for s in REDUCTIONS if height / s >= out_h and width / s >= out_w), 1)
        short = self.first.size[0]
        return None, next((s for s in REDUCTIONS if min(width, height) / s >= short), 1)

    def _full(self, img: torch.Tensor, params: dict[str, Any] | None) -> torch.Tensor:
        """The step on the full-size image: what the plain pipeline computes, bit for bit."""
        if params is None:
            return self.first(img)
        return self.first.transform(img, params)

    def _reduced(
        self,
        pil: Any,
        orientation: int,
        shown: tuple[int, int],
        params: dict[str, Any] | None,
        scale: int,
    ) -> torch.Tensor:
        from PIL import Image

        w, h = pil.size
        drafted = pil.draft(pil.mode, (w // scale, h // scale))
        if drafted is None or drafted[1][2] != w / scale:
            raise ValueError("the JPEG decoder refused the reduced size")
        if params is None:  # Resize: the whole image
            if len(self.first.size) == 2:
                out_h, out_w = self.first.size
            else:
                out_h, out_w = resized_size(shown[1], shown[0], self.first.size[0])
            box = (0.0, 0.0, w, h)
        else:
            out_h, out_w = self.first.size
            top, left = params["top"], params["left"]
            corners = [
                _stored_point(orientation, x, y, w, h)
                for x, y in ((left, top), (left + params["width"], top + params["height"]))
            ]
            xs, ys = [c[0] for c in corners], [c[1] for c in corners]
            box = (min(xs), min(ys), max(xs), max(ys))
        method = _transpose_method(orientation)
        if orientation in (5, 6, 7, 8):
            out_h, out_w = out_w, out_h
        img = pil.convert("RGB") if pil.mode != "RGB" else pil
        out = img.resize(
            (out_w, out_h), Image.Resampling.BILINEAR, box=tuple(c / scale for c in box)
        )
        if method is not None:
            out = out.transpose(method)
        return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).contiguous()


@functools.lru_cache(maxsize=8)
def _val_decoder(resize: EvalResize) -> ReducedDecode:
    decoder = ReducedDecode.of(val_transform(resize))
    assert decoder is not None
    return decoder


def load_preprocessed(path: str | os.PathLike[str], size: int | EvalResize) -> torch.Tensor:
    """A file's validation preprocessing (``eval_preprocess`` with ``size``: an
    ``EvalResize``, or an image size for the default one) as the validation loader computes
    it: a large JPEG is decoded at reduced size, so prediction sees the pixels validation
    saw, as fast.

    Raises:
        what ``load_image(path, native=False)`` raises for a file it cannot decode.
    """
    decoder = _val_decoder(as_resize(size))
    return decoder.rest(decoder(path))
