"""decode="gpu": the worker draws the augmentation, the device decodes and crops.

On this CPU-only machine the device side runs on the CPU (``decode_jpeg`` with a list takes
any device), which checks everything but nvjpeg itself: the draw is the CPU path's, image for
image, and the pixels are the CPU path's too. ``test_cuda_decode_*`` runs where CUDA is.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import decode_jpeg

from tests.conftest import make_tree
from tests.trainer.data.malformed import damage, good_bytes
from trainer.data import ImageFolderData, gpu_decode, load_image, train_transform
from trainer.data.gpu_decode import EncodedBatch, EncodedImageDataset, collate_encoded, decode_batch
from trainer.data.skipping import BadImages, Skipped
from trainer.engine import Engine
from trainer.errors import ConfigError, DataError
from trainer.models import build_model

SIZE = 24
CPU = torch.device("cpu")


def _smooth(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth colour image: JPEG keeps it close, and crops of it differ visibly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    chans = [np.sin(x / (5 + 3 * c) + rng.uniform(0, 6)) + np.cos(y / (4 + 2 * c)) for c in range(3)]
    return ((np.stack(chans, -1) + 2) * 60).clip(0, 255).astype(np.uint8)


def _files(folder: Path) -> list[tuple[Path, int]]:
    """JPEGs (upright and EXIF-rotated), a grayscale JPEG and a PNG: both decode routes."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, orientation in enumerate((1, 3, 6, 8, 5)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = folder / f"o{orientation}.jpg"
        Image.fromarray(_smooth(48, 36, k)).save(path, quality=95, exif=exif.tobytes())
        files.append((path, k % 2))
    Image.fromarray(_smooth(40, 40, 9)[..., 0]).save(folder / "gray.jpg", quality=95)
    Image.fromarray(_smooth(30, 44, 10)).save(folder / "img.png")
    files += [(folder / "gray.jpg", 0), (folder / "img.png", 1)]
    return files


def _dataset(files: list[tuple[Path, int]], hflip: bool = True) -> EncodedImageDataset:
    return EncodedImageDataset(files, SIZE, crop_scale=0.3, hflip=hflip, load=load_image)


def test_each_image_gets_the_cpu_paths_draw_and_pixels(tmp_path: Path) -> None:
    files = _files(tmp_path)
    ds = _dataset(files)
    cpu_transform = train_transform(SIZE, crop_scale=0.3, hflip=True)
    routes = set()
    for seed in range(6):
        for i, (path, _) in enumerate(files):
            torch.manual_seed(seed)
            expected = cpu_transform(load_image(path))
            torch.manual_seed(seed)
            item = ds[i]
            routes.add("device" if item[2][0] != 0 else "worker")
            x, y = decode_batch(collate_encoded([item], SIZE), CPU)
            assert x.shape == (1, 3, SIZE, SIZE) and x.dtype == torch.uint8
            assert torch.equal(x[0], expected), (path.name, seed)
            assert y.tolist() == [files[i][1]]
    assert routes == {"device", "worker"}  # JPEGs wait for the device; gray and PNG do not


def test_the_draw_has_the_cpu_statistics(tmp_path: Path) -> None:
    """Crop boxes and flips over many draws, against the CPU transform's own draws."""
    path = tmp_path / "a.jpg"
    Image.fromarray(_smooth(64, 48, 0)).save(path, quality=90)
    ds = _dataset([(path, 0)])
    torch.manual_seed(0)
    params = torch.stack([ds[0][2] for _ in range(3000)]).double()
    crop = train_transform(SIZE, crop_scale=0.3).transforms[0]
    torch.manual_seed(1)  # another stream: equal statistics, not equal draws
    image = torch.zeros(3, 48, 64, dtype=torch.uint8)
    boxes = [crop.make_params([image]) for _ in range(3000)]
    ref = torch.tensor([[b["top"], b["left"], b["height"], b["width"]] for b in boxes]).double()
    ours = params[:, 1:5]
    assert (ours.mean(0) - ref.mean(0)).abs().max() < 1.0  # pixels, on a 48x64 image
    assert (ours.std(0) - ref.std(0)).abs().max() < 1.0
    share = ours[:, 2] * ours[:, 3] / (48 * 64)
    assert share.min() >= 0.3 * 0.9 and share.max() <= 1.0
    assert abs(params[:, 5].mean().item() - 0.5) < 0.04  # flips
    assert _dataset([(path, 0)], hflip=False)[0][2][5] == 0


def test_a_batch_mixes_routes_and_applies_jitter_per_image(tmp_path: Path) -> None:
    files = _files(tmp_path)
    ds = _dataset(files)
    torch.manual_seed(1)
    items = [ds[i] for i in range(len(files))]
    plain, _ = decode_batch(collate_encoded(items, SIZE), CPU)
    jitter = train_transform(SIZE, color_jitter=0.4).transforms[-1]
    jittered, targets = decode_batch(collate_encoded(items, SIZE, jitter), CPU)
    assert plain.shape == jittered.shape == (len(files), 3, SIZE, SIZE)
    assert targets.tolist() == [t for _, t in files]
    changed = [not torch.equal(a, b) for a, b in zip(plain, jittered, strict=True)]
    assert all(changed)


def test_image_folder_data_decode_gpu_trains(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", counts={"a": 6, "b": 6}, size=(30, 26))
    data = ImageFolderData(root, img_size=16, batch_size=4, workers=0, decode="gpu")
    batch = next(iter(data.train_loader()))
    assert isinstance(batch, EncodedBatch) and len(batch.images) == 4
    val = next(iter(data.val_loader()))
    assert val[0].shape == (4, 3, 16, 16)  # validation keeps the CPU path
    engine = Engine(build_model("small_cnn", 2), data, max_epochs=2, device="cpu")
    engine.fit()
    first, last = engine.state.history
    assert math.isfinite(first["train/loss"]) and math.isfinite(last["train/loss"])
    assert 0 <= last["train/acc"] <= 1 and last["train/img_s"] > 0
    assert engine.state.step == 6  # 12 images in batches of 4, twice


def test_decode_gpu_with_loader_workers_delivers_batches(tmp_path: Path) -> None:
    # The workers send the files' bytes back: a tensor read by torchvision.io.read_file could
    # not cross to the main process (its storage failed to share), and the loader hung.
    root = make_tree(tmp_path / "tree", counts={"a": 4, "b": 4}, size=(30, 26))
    data = ImageFolderData(root, img_size=16, batch_size=4, workers=1, decode="gpu")
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(next(iter(data.train_loader()))))
    thread.daemon = True  # a hang fails the test below, and does not keep pytest alive
    thread.start()
    thread.join(timeout=30)
    data.close()
    assert got and isinstance(got[0], EncodedBatch) and len(got[0].images) == 4


def test_decode_gpu_settings_are_checked(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", counts={"a": 3, "b": 3})
    with pytest.raises(ConfigError, match="one or the other"):
        ImageFolderData(root, decode="gpu", cache="ram")
    with pytest.raises(ConfigError, match="decode must be"):
        ImageFolderData(root, decode="nvjpeg")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_cuda_decode_matches_the_cpu_closely(tmp_path: Path) -> None:
    files = _files(tmp_path)
    ds = _dataset(files)
    torch.manual_seed(0)
    items = [ds[i] for i in range(len(files))]
    on_gpu, _ = decode_batch(collate_encoded(items, SIZE), torch.device("cuda"))
    on_cpu, _ = decode_batch(collate_encoded(items, SIZE), CPU)
    assert on_gpu.device.type == "cuda"
    # nvjpeg and libjpeg round the IDCT differently: close, not equal.
    assert (on_gpu.cpu().float() - on_cpu.float()).abs().mean() < 3


def test_an_oversized_jpeg_is_refused_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "huge.jpg"
    Image.fromarray(_smooth(60, 45, 0)).save(path, quality=90)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 2,700 pixels is now a bomb
    with pytest.raises(DataError, match="huge.jpg"):
        _dataset([(path, 0)])[0]


# ------------------------------------------------------------------ files that fail to decode
# No GPU here: the device side runs on the CPU, where decode_jpeg fails on a truncated JPEG as
# nvjpeg does (a RuntimeError for the whole batched call). A GPU check of nvjpeg's own
# refusals is still to be run (test_cuda_decode_survives_a_truncated_jpeg).


def _truncated(path: Path, seed: int = 0) -> Path:
    """A JPEG whose header is whole but whose entropy-coded data stops halfway: the header
    checks pass it, decode_jpeg and Pillow both refuse it."""
    Image.fromarray(_smooth(40, 32, seed)).save(path, quality=90)
    raw = path.read_bytes()
    scan = raw.index(b"\xff\xda")  # start of scan: the header ends here
    path.write_bytes(raw[: scan + (len(raw) - scan) // 2])
    return path


class _Source:
    """Stands in for the SkippingLoader a batch is bound to."""

    def __init__(self, total: int, max_fraction: float = 0.5) -> None:
        self.bad = BadImages(Path("tree"), total, [], max_fraction)
        self.replaced: list[Skipped] = []

    def replace(self, failed: list[Skipped]) -> EncodedBatch:
        self.replaced += failed
        return collate_encoded([(torch.zeros(3, SIZE, SIZE, dtype=torch.uint8), 5,
                                 torch.zeros(6, dtype=torch.int64), "r.png", 0)], SIZE)  # fmt: skip


def test_one_bad_jpeg_is_left_out_and_the_rest_of_the_batch_kept(tmp_path: Path) -> None:
    files = _files(tmp_path)
    bad = _truncated(tmp_path / "zz.jpg")
    ds = _dataset([*files, (bad, 1)])
    torch.manual_seed(3)
    items = [ds[i] for i in range(len(ds))]
    assert items[-1][2][0] != 0  # the bad JPEG went to the device, as nvjpeg would get it
    with pytest.raises(RuntimeError):  # the batched call fails as a whole
        decode_jpeg([items[0][0], items[-1][0]])
    source = _Source(total=len(ds))
    x, y = decode_batch(collate_encoded(items, SIZE).bind(source), CPU)
    alone, targets = decode_batch(collate_encoded(items[:-1], SIZE), CPU)
    assert torch.equal(x, alone) and torch.equal(y, targets)  # one shorter, nothing else lost
    assert list(source.bad.skipped) == [str(bad)] and source.bad.events == 1
    assert "truncated" in source.bad.skipped[str(bad)] and not source.replaced
    with pytest.raises(DataError, match="zz.jpg"):  # no loader to report to: named, refused
        decode_batch(collate_encoded(items, SIZE), CPU)


def test_a_jpeg_the_device_refuses_is_decoded_with_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _files(tmp_path)[:5]  # the JPEGs, EXIF-rotated ones included
    ds = _dataset(files)
    torch.manual_seed(0)
    items = [ds[i] for i in range(len(ds))]
    expected, _ = decode_batch(collate_encoded(items, SIZE), CPU)
    refused = items[3][0]
    real = gpu_decode.decode_jpeg

    def picky(data: Any, **kwargs: Any) -> Any:  # as nvjpeg refusing one file
        if isinstance(data, list) or data is refused:
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return real(data, **kwargs)

    monkeypatch.setattr(gpu_decode, "decode_jpeg", picky)
    source = _Source(total=len(ds))
    x, _ = decode_batch(collate_encoded(items, SIZE).bind(source), CPU)
    assert x.shape == expected.shape and not source.bad.skipped
    assert torch.equal(x[:3], expected[:3]) and torch.equal(x[4:], expected[4:])
    assert (x[3].float() - expected[3].float()).abs().mean() < 1  # Pillow's libjpeg, upright


def test_a_batch_that_all_failed_on_the_device_is_replaced(tmp_path: Path) -> None:
    ds = _dataset([(_truncated(tmp_path / f"zz{i}.jpg", i), 0) for i in range(2)])
    source = _Source(total=10)
    x, y = decode_batch(collate_encoded([ds[0], ds[1]], SIZE).bind(source), CPU)
    assert [s.path for s in source.replaced] == [str(tmp_path / "zz0.jpg"), str(tmp_path / "zz1.jpg")]
    assert x.shape == (1, 3, SIZE, SIZE) and y.tolist() == [5]  # what replace() gave


def test_decode_gpu_skips_and_reports_bad_files_and_keeps_every_step(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", counts={"a": 4, "b": 4}, size=(30, 26))
    bad = _truncated(root / "train" / "a" / "zz.jpg")  # fails on the device
    gone = root / "train" / "b" / "2.png"  # deleted after the check: the worker cannot read it
    data = ImageFolderData(
        root, img_size=16, batch_size=1, workers=0, decode="gpu", max_bad_fraction=0.3
    )
    assert data.bad_files == []  # both passed the start-up check
    gone.unlink()
    report = tmp_path / "data_report.json"
    data.write_report(report)
    loader = data.train_loader()
    engine = Engine(build_model("small_cnn", 2), data, max_epochs=2, device="cpu")
    engine.fit()
    assert engine.state.step == 2 * len(loader) == 18  # a batch of one bad image: replaced
    assert set(data.bad_images.skipped) == {str(bad), str(gone)}
    assert data.bad_images.events == 4  # each drawn once per epoch
    written = json.loads(report.read_text())
    assert {s["path"] for s in written["skipped_in_training"]} == {str(bad), str(gone)}


def test_decode_gpu_a_png_damaged_after_the_check_is_skipped_with_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the device does not decode (PNG), the loader decodes itself, with Pillow only as the
    # CPU path does: a PNG damaged after the check (here one that segfaults torchvision's
    # native decoder) is named and skipped, never handed to a native decoder.
    root = make_tree(tmp_path / "tree", counts={"a": 3, "b": 3}, size=(30, 26))
    victim = root / "train" / "a" / "0.png"
    data = ImageFolderData(
        root, img_size=16, batch_size=8, workers=0, decode="gpu", max_bad_fraction=0.3
    )
    assert data.bad_files == []
    victim.write_bytes(damage("png", "corrupt_data", good_bytes("png")))
    native: list[bytes] = []  # files offered to torchvision's decoders: none may be

    def spy(raw: bytes) -> None:
        native.append(raw[:8])
        return None  # Pillow decodes it all the same: a mutation fails here, not by a crash

    monkeypatch.setattr("trainer.data.decode._torchvision_mode", spy)
    for _ in data.train_loader():
        pass
    assert list(data.bad_images.skipped) == [str(victim)]
    assert native == []


def test_decode_gpu_a_jpeg_grown_over_the_pixel_budget_after_the_check_is_skipped(
    tmp_path: Path,
) -> None:
    # A JPEG the device could decode, but over --max-image-pixels since the check: the header
    # sends it to the CPU path, which refuses it by the budget.
    root = make_tree(tmp_path / "tree", counts={"a": 3, "b": 3}, size=(30, 26))
    data = ImageFolderData(root, img_size=16, batch_size=8, workers=0, decode="gpu",
                           max_image_pixels=40 * 40, max_bad_fraction=0.3)  # fmt: skip
    assert data.bad_files == []
    grown = root / "train" / "a" / "1.jpg"
    Image.fromarray(_smooth(60, 45, 0)).save(grown, quality=90)  # 2,700 pixels
    for _ in data.train_loader():
        pass
    assert list(data.bad_images.skipped) == [str(grown)]
    assert "pixel budget" in data.bad_images.skipped[str(grown)]


def test_decode_gpu_failures_count_toward_max_bad_fraction(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "tree", counts={"a": 4, "b": 4}, size=(30, 26))
    for i in range(2):
        _truncated(root / "train" / "a" / f"zz{i}.jpg", seed=i)
    data = ImageFolderData(
        root, img_size=16, batch_size=16, workers=0, decode="gpu", max_bad_fraction=0.05
    )
    batch = next(iter(data.train_loader()))  # the worker reads and parses both: no failure
    with pytest.raises(DataError, match="max-bad-fraction") as info:
        decode_batch(batch, CPU)
    assert "zz" in str(info.value) and "during training" in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nvjpeg)")
def test_cuda_decode_survives_a_truncated_jpeg(tmp_path: Path) -> None:
    """nvjpeg and a JPEG cut mid-scan: never a crash, and the batch's good images intact.
    nvjpeg may refuse the file (then it is skipped and recorded) or decode what is there
    (as libjpeg does with corrupt data); either way the outcome is consistent."""
    files = _files(tmp_path)
    ds = _dataset([*files, (_truncated(tmp_path / "zz.jpg"), 1)])
    torch.manual_seed(0)
    items = [ds[i] for i in range(len(ds))]
    cuda = torch.device("cuda")
    source = _Source(total=len(ds))
    x, y = decode_batch(collate_encoded(items, SIZE).bind(source), cuda)
    good, _ = decode_batch(collate_encoded(items[:-1], SIZE), cuda)
    # Batched and one-at-a-time nvjpeg decodes may take different back ends: close, not equal.
    assert (x[: len(files)].float() - good.float()).abs().mean() < 1
    if len(x) == len(files):
        assert list(source.bad.skipped) == [str(tmp_path / "zz.jpg")]
    else:
        assert len(x) == len(files) + 1 and not source.bad.skipped
    assert y.tolist()[: len(files)] == [t for _, t in files]
