"""load_image: formats, alpha, 16-bit, EXIF orientation, and the decompression-bomb guard."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from trainer.data import load_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (12, 10, 1), dtype=np.uint8)


def _save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    img.save(path, **kwargs)  # type: ignore[arg-type]
    return path


def _on_white(img: Image.Image) -> np.ndarray:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


@pytest.mark.parametrize(
    ("name", "make", "reference", "tol"),
    [
        ("l.png", lambda: Image.fromarray(RGB).convert("L"), lambda i: i.convert("RGB"), 0),
        ("p.png", lambda: Image.fromarray(RGB).convert("P"), lambda i: i.convert("RGB"), 0),
        ("p.gif", lambda: Image.fromarray(RGB).convert("P"), lambda i: i.convert("RGB"), 0),
        ("rgba.png", lambda: Image.fromarray(np.concatenate([RGB, ALPHA], 2)), _on_white, 1),
        (
            "la.png",
            lambda: Image.fromarray(np.concatenate([RGB, ALPHA], 2)).convert("LA"),
            _on_white,
            1,
        ),
        ("rgba.webp", lambda: Image.fromarray(np.concatenate([RGB, ALPHA], 2)), _on_white, 1),
        ("cmyk.jpg", lambda: Image.fromarray(RGB).convert("CMYK"), lambda i: i.convert("RGB"), 1),
        ("rgb.bmp", lambda: Image.fromarray(RGB), lambda i: i.convert("RGB"), 0),
        ("rgb.tiff", lambda: Image.fromarray(RGB), lambda i: i.convert("RGB"), 0),
        ("rgba.tiff", lambda: Image.fromarray(np.concatenate([RGB, ALPHA], 2)), _on_white, 1),
    ],
)
def test_load_image_matches_pil(
    tmp_path: Path, name: str, make: object, reference: object, tol: int
) -> None:
    path = _save(make(), tmp_path / name)  # type: ignore[operator]
    out = load_image(path)
    assert out.dtype == torch.uint8 and out.shape == (3, 12, 10)
    with Image.open(path) as img:
        ref = np.asarray(reference(img)).astype(int)  # type: ignore[operator]
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - ref).max() <= tol


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_is_scaled_not_clipped(tmp_path: Path, fmt: str) -> None:
    arr = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = load_image(_save(img, tmp_path / f"x.{fmt}"))
    assert out.shape == (3, 1, 4)
    assert out[0, 0].tolist() == [0, 1, 128, 255]
    assert torch.equal(out[0], out[2])


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rot.jpg", {"quality": 95}),
        ("rot.png", {}),
        ("rot.tiff", {}),
        ("rot.webp", {"lossless": True}),
        ("lossy.webp", {"quality": 95}),
    ],
)
def test_exif_orientation_is_applied(tmp_path: Path, name: str, options: dict[str, object]) -> None:
    img = Image.fromarray(RGB)  # 10 wide, 12 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / name, exif=exif.tobytes(), **options)
    with Image.open(path) as opened:
        ref = np.asarray(ImageOps.exif_transpose(opened).convert("RGB")).astype(int)
    out = load_image(path)
    assert out.shape == (3, 10, 12) == (3, *ref.shape[:2])
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - ref).mean() < 2


def test_load_image_reads_from_memory_equivalent_bytes(tmp_path: Path) -> None:
    # The PIL fallback and torchvision agree on a plain RGB PNG.
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(buf.getvalue())
    assert np.array_equal(load_image(path).permute(1, 2, 0).numpy(), RGB)


def test_decompression_bomb_is_skipped_with_a_reason(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from trainer.data import load_image

    root = make_tree(tmp_path / "data", {"a": 30, "b": 30}, size=(8, 8))
    Image.new("RGB", (40, 40)).save(root / "train" / "a" / "huge.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "train" / "b" / "tiny.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40x40 is now "over twice the limit"
    with pytest.raises(ValueError, match="too large"):
        load_image(root / "train" / "a" / "huge.png")
    data = small_data(root)
    assert [(p.name, "too large" in r) for p, r in data.bad_files] == [("huge.png", True)]
    tiny = load_image(root / "train" / "b" / "tiny.png")  # a 1x1 image works
    assert tiny.shape == (3, 1, 1) and tiny[:, 0, 0].tolist() == [10, 200, 30]
    images, _ = next(iter(data.train_loader()))
    assert images.shape[1:] == (3, data.img_size, data.img_size)


def test_pillow_decodes_keep_the_hwc_layout_and_leave_the_callers_image_alone() -> None:
    # The uint8 antialiased resize that every training and validation image goes through has
    # a fast kernel for a permuted HWC buffer (what torchvision's PILToTensor gives it); a
    # copy to CHW order would cost more than a 500x375 decode, and slow the resize down.
    from trainer.data import image_to_tensor

    img = Image.fromarray(RGB)
    before = np.asarray(img).copy()
    out = image_to_tensor(img)
    assert out.shape == (3, 12, 10) and out.stride() == (1, 10 * 3, 3)
    out[:] = 0  # the tensor owns its pixels: writing to it leaves the image as it was
    assert np.array_equal(np.asarray(img), before)
    batch = out[None].float()
    assert batch.is_contiguous(memory_format=torch.channels_last)
    gray = image_to_tensor(np.ascontiguousarray(RGB[..., 0]))  # (H, W): one channel
    assert gray.shape == (3, 12, 10) and 0 not in gray.stride()  # three channels, not a view
