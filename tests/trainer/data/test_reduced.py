"""Reduced-size JPEG decoding: the same crop boxes as the plain pipeline, the same pixels
within a stated tolerance, and a full decode wherever the reduced one does not apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from tests.conftest import make_tree
from tests.trainer.data.conftest import small_data
from trainer.data.dataset import ImageListDataset
from trainer.data.decode import load_image
from trainer.data.reduced import ReducedDecode
from trainer.data.skipping import Skipped
from trainer.data.transforms import EvalResize, train_transform, val_transform
from trainer.errors import DataError
from trainer.rng import torch_seeded

# Reduced and full decodes of the same crop differ by libjpeg's DCT scaling against a resize
# from the full image: under half a level on average on these photos, 3 levels at most.
MEAN_TOLERANCE = 1.0
MAX_TOLERANCE = 8


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Photo-like pixels: smooth gradients and waves, with a little sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 128 + 100 * np.sin(xx / 97 + yy / 211)
    g = 128 + 90 * np.cos(yy / 63) * np.sin(xx / 150)
    b = 127 * (xx / w + yy / h)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _save(img: Image.Image, path: Path, orientation: int = 1) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, quality=90, exif=exif.tobytes())
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1600x1200 photo, and an 800x600 one stored under each EXIF orientation."""
    root = tmp_path_factory.mktemp("photos")
    small = _photo(800, 600, seed=1)
    found = {"large": _save(_photo(1600, 1200), root / "large.jpg")}
    for o in range(1, 9):
        found[f"o{o}"] = _save(small, root / f"o{o}.jpg", o)
    return found


def _reference(transform: Any, path: Path, seed: int) -> torch.Tensor:
    """What the plain pipeline gives: full decode, then the whole transform."""
    with torch_seeded(seed):
        return transform(load_image(path, native=False))  # type: ignore[no-any-return]


def _ours(transform: Any, path: Path, seed: int) -> torch.Tensor:
    dec = ReducedDecode.of(transform)
    assert dec is not None
    with torch_seeded(seed):
        return dec.rest(dec(path))  # type: ignore[no-any-return]


def _scale(transform: Any, path: Path, seed: int) -> int:
    """The reduction ``ReducedDecode`` picks for ``path`` under ``seed``."""
    dec = ReducedDecode.of(transform)
    assert dec is not None
    with Image.open(path) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    with torch_seeded(seed):
        return dec.plan(w, h)[1]


@pytest.mark.parametrize(("name", "size"), [("large", 224), *[(f"o{o}", 64) for o in range(1, 9)]])
def test_a_reduced_decode_gives_the_full_decodes_crop_within_tolerance(
    photos: dict[str, Path], name: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []  # the reduction of each reduced decode
    draft = JpegImagePlugin.JpegImageFile.draft

    def recording_draft(self: Any, mode: Any, size: Any) -> Any:
        result = draft(self, mode, size)
        decoded.append(round(self.decoderconfig[0]) if result else 1)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording_draft)
    path, scales = photos[name], set()
    train, squash = train_transform(size), val_transform(EvalResize.of(size, val_resize="squash"))
    for transform in (train, val_transform(size), squash):
        for seed in range(8) if transform is train else range(1):  # validation: deterministic
            ref = _reference(transform, path, seed)
            decoded.clear()
            ours = _ours(transform, path, seed)
            scale = _scale(transform, path, seed)
            assert decoded == ([scale] if scale > 1 else [])  # decoded at the planned size
            assert ours.dtype == torch.uint8 and ours.shape == ref.shape == (3, size, size)
            diff = (ours.float() - ref.float()).abs()
            assert diff.mean() < MEAN_TOLERANCE and diff.max() <= MAX_TOLERANCE, (seed, transform)
            scales.add(scale)
    # The photos are reduced, at more than one factor (a flip or box out of place, or a wrong
    # EXIF mapping, would differ by tens of levels).
    assert len(scales - {1}) >= 2, scales


def test_the_crop_box_is_drawn_on_the_full_size_as_the_plain_pipeline_draws_it() -> None:
    transform = train_transform(224, crop_scale=0.08)
    rrc = transform.transforms[0]
    dec = ReducedDecode.of(transform)
    assert dec is not None
    for w, h in ((4032, 3024), (3024, 4032), (500, 375), (1600, 1200)):
        image = torch.zeros(3, h, w, dtype=torch.uint8)
        for seed in range(50):
            with torch_seeded(seed):
                ours, _ = dec.plan(w, h)
                after_ours = torch.rand(3)  # what the next step (the flip) would draw
            with torch_seeded(seed):
                ref = rrc.make_params([image])
                after_ref = torch.rand(3)
            assert ours == ref, (w, h, seed)
            assert torch.equal(after_ours, after_ref)


def test_the_reduction_is_the_largest_at_which_the_box_covers_the_output() -> None:
    dec = ReducedDecode.of(train_transform(224))
    assert dec is not None
    seen = {}
    for w, h in ((4032, 3024), (1600, 1200)):
        seen[w] = set()
        for seed in range(100):
            with torch_seeded(seed):
                box, scale = dec.plan(w, h)
            assert box is not None
            side = min(box["height"], box["width"])
            assert side / scale >= 224 and (scale == 8 or side / (2 * scale) < 224), (box, scale)
            seen[w].add(scale)
    # A 12-MP photo's boxes are all decoded at 1/4 or 1/8 for 224 px.
    assert seen == {4032: {4, 8}, 1600: {1, 2, 4}}
    val = ReducedDecode.of(val_transform(224))  # short side 256
    assert val is not None
    sizes = ((4032, 3024), (3024, 4032), (2048, 1536), (600, 512), (600, 511), (500, 375))
    assert [val.plan(w, h) for w, h in sizes] == [
        (None, 8), (None, 8), (None, 4), (None, 2), (None, 1), (None, 1)
    ]  # fmt: skip
    squash = ReducedDecode.of(val_transform(EvalResize.of(224, val_resize="squash")))
    assert squash is not None  # both sides to 224: the short side must stay >= 224
    sizes = ((4032, 1800), (1800, 4032), (4032, 1791), (1791, 4032), (600, 448), (600, 447))
    assert [squash.plan(w, h) for w, h in sizes] == [
        (None, 8), (None, 8), (None, 4), (None, 4), (None, 2), (None, 1)
    ]  # fmt: skip


def test_no_reduction_and_other_formats_give_the_plain_pipelines_pixels(tmp_path: Path) -> None:
    img = _photo(400, 300, seed=2)
    small = _save(img, tmp_path / "small.jpg")  # no box of it spans 2 x 224 px
    png = tmp_path / "big.png"
    img.resize((500, 375)).save(png)
    for transform in (train_transform(224), val_transform(224)):
        for path in (small, png):
            for seed in range(5):
                assert torch.equal(_ours(transform, path, seed), _reference(transform, path, seed))


@pytest.mark.parametrize("refusal", ["returns None", "raises"])
def test_a_jpeg_the_reduced_decode_refuses_is_decoded_at_full_size(
    photos: dict[str, Path], monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    def draft(self: Any, mode: Any, size: Any) -> None:
        if refusal == "raises":
            raise OSError("no DCT scaling here")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    for transform in (train_transform(64), val_transform(64)):
        for seed in range(4):
            assert _scale(transform, photos["o6"], seed) > 1  # a reduced decode was due
            ours, ref = (
                _ours(transform, photos["o6"], seed),
                _reference(transform, photos["o6"], seed),
            )
            assert torch.equal(ours, ref)


def test_a_truncated_jpeg_is_skipped_or_named(photos: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(photos["large"].read_bytes()[:20000])
    samples = [(bad, 0)]
    dataset = ImageListDataset(samples, train_transform(64), skip_bad=True, reduced=True)
    assert dataset.reduced is not None
    skipped = dataset[(0, 3)]
    assert isinstance(skipped, Skipped) and "truncated" in skipped.reason
    dataset.skip_bad = False
    with pytest.raises(DataError, match="cut.jpg"):
        dataset[(0, 3)]


def test_only_the_built_in_pipelines_and_disk_reads_decode_reduced(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tiny", {"a": 4, "b": 4}, size=(40, 32))
    data = small_data(root)
    assert data.train_dataset().reduced is not None and data.val_dataset().reduced is not None
    custom = train_transform(16, crop_scale=0.5)
    own = small_data(root, train_transform=custom, val_transform=val_transform(16))
    assert own.train_dataset().reduced is None and own.val_dataset().reduced is None
    assert small_data(root, cache="ram").train_dataset().reduced is None
    # A loader over a tree of JPEGs and PNGs still yields the output size.
    images, _ = next(iter(data.train_loader()))
    assert images.shape[1:] == (3, 16, 16) and images.dtype == torch.uint8


def test_reduced_batches_are_a_function_of_the_seed_alone(tmp_path: Path) -> None:
    # What exact resume rests on: a new loader, with other workers, draws the same pixels.
    root = tmp_path / "photos"
    for i in range(6):
        (root / "train" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        _save(_photo(256, 192, seed=i), root / "train" / "ab"[i % 2] / f"{i}.jpg", 1 + i % 8)
    make_tree(root, {"a": 1, "b": 1}, splits=("val",))
    epochs = []
    for workers in (0, 2):
        data = small_data(root, img_size=32, batch_size=3, workers=workers)
        assert data.train_dataset().reduced is not None
        epochs.append([images for images, _ in data.train_loader()])
        data.close()
    assert len(epochs[0]) == 2
    assert all(torch.equal(a, b) for a, b in zip(*epochs, strict=True))
    # A crop of 256x192 spans 2 x 32 px at the default scale: the batch went through reductions.
    dec = data.train_dataset().reduced
    assert dec is not None
    scales = set()
    for seed in range(20):
        with torch_seeded(seed):
            scales.add(dec.plan(256, 192)[1])
    assert scales >= {2, 4}


def test_prediction_preprocesses_a_file_as_validation_does(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    from trainer.data import load_preprocessed
    from trainer.predict import PredictBatches

    root = make_tree(tmp_path / "tree", {"a": 2, "b": 2}, size=(40, 32))
    for name in ("o1", "o6"):
        (root / "val" / "a" / f"{name}.jpg").write_bytes(photos[name].read_bytes())
    data = small_data(root, img_size=64)
    val = data.val_dataset()
    assert val.reduced is not None
    files = [Path(val.samples.path(i)) for i in range(len(val))]
    expected = torch.stack([val[i][0] for i in range(len(val))])
    assert torch.equal(torch.stack([load_preprocessed(f, 64) for f in files]), expected)
    batches = PredictBatches(data, files, batch_size=len(files))
    assert torch.equal(next(iter(batches)), expected)
