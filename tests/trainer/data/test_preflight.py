"""The start-up check: headers or full decodes, in bounded parallel chunks, native crashes
contained, results cached by path and file version and shared by DDP ranks."""

from __future__ import annotations

import json
import os
import signal
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import join_as_rank, make_tree, run_ranks
from tests.trainer.data.conftest import small_data
from tests.trainer.data.malformed import DAMAGES, FORMATS, damage, good_bytes
from trainer.data import preflight as pf
from trainer.data.preflight import check_chunk, preflight

# A real crash: torchvision 0.29's PNG decoder segfaults on this file (Pillow raises).
NATIVE_CRASH = ("png", "corrupt_data")


def _malformed(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for ext in FORMATS:
        raw = good_bytes(ext)
        (folder / f"good.{ext}").write_bytes(raw)
        files[f"good.{ext}"] = folder / f"good.{ext}"
        for how in DAMAGES:
            path = folder / f"{how}.{ext}"
            path.write_bytes(damage(ext, how, raw))
            files[path.name] = path
    return files


def _bad_names(paths: list[Path], **kwargs: Any) -> dict[str, str]:
    result = preflight(paths, **kwargs)
    return {paths[i].name: reason for i, reason in result.bad}


def test_header_check_rejects_what_a_header_shows_and_reads_no_pixel_data(tmp_path: Path) -> None:
    files = _malformed(tmp_path)
    ppm = tmp_path / "ppm.jpg"  # a format Pillow opens but the trainer does not decode
    Image.new("RGB", (4, 4)).save(ppm, "PPM")
    paths = [*files.values(), ppm]
    bad = _bad_names(paths, mode="header")
    assert {f"wrong_header.{ext}" for ext in FORMATS} <= set(bad)
    assert "ppm.jpg" in bad and "PPM" in bad["ppm.jpg"]
    assert not {n for n in bad if n.startswith("good")}
    # Damage past the header (here, inside the compressed pixels) passes a header check.
    assert not {f"corrupt_data.{ext}" for ext in FORMATS} & set(bad)


def test_header_check_refuses_decompression_bombs(tmp_path: Path, monkeypatch: Any) -> None:
    Image.new("RGB", (40, 40)).save(tmp_path / "huge.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    bad = _bad_names([tmp_path / "huge.png", tmp_path / "small.png"], mode="header")
    assert list(bad) == ["huge.png"] and "too large" in bad["huge.png"]


def _jpegs(folder: Path) -> list[Path]:
    """Every damaged JPEG, and good ones of the kinds a tree holds."""
    files = [p for p in _malformed(folder).values() if p.suffix == ".jpg"]
    img = Image.effect_noise((40, 30), 60).convert("RGB")
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "x" * 30_000  # rotated, and a header past 16 KB
    kinds = {
        "progressive.jpg": (img, {"progressive": True}),
        "gray.jpg": (img.convert("L"), {}),
        "cmyk.jpg": (img.convert("CMYK"), {}),
        "exif.jpg": (img, {"exif": exif}),
        "optimized.jpg": (img, {"optimize": True, "quality": 40}),
    }
    for name, (im, options) in kinds.items():
        im.save(folder / name, "JPEG", **options)
        files.append(folder / name)
    raw = good_bytes("jpg")
    sof = raw.index(b"\xff\xc0")  # baseline frame: length, precision, height, width, layers
    crafted = {
        "cut_before_scan.jpg": raw[: raw.index(b"\xff\xda")],  # the header never ends
        "twelve_bit.jpg": raw[: sof + 4] + b"\x0c" + raw[sof + 5 :],
        "two_layers.jpg": raw[: sof + 9] + b"\x02" + raw[sof + 10 :],
    }
    for name, data in crafted.items():
        (folder / name).write_bytes(data)
        files.append(folder / name)
    return files


def test_the_header_check_gives_pillows_verdict_on_jpegs(tmp_path: Path) -> None:
    bad = _bad_names(_jpegs(tmp_path), mode="header")
    assert set(bad) == {"wrong_header.jpg", "bad_length.jpg", "twelve_bit.jpg", "two_layers.jpg"}


def _png_header(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (its data would not decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_an_image_over_the_pixel_budget_is_refused_before_any_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 13377 x 13377 is just under Pillow's own refusal (twice MAX_IMAGE_PIXELS): decoding it
    # would take seconds and 2.4 GB. A file of a few hundred bytes claims it.
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(13377, 13377))
    assert huge.stat().st_size < 1200
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    paths = [huge, tmp_path / "small.png"]
    bad = _bad_names(paths, mode="header")
    assert list(bad) == ["huge.png"] and "13377x13377" in bad["huge.png"]
    assert "--max-image-pixels" in bad["huge.png"]
    # A budget below the small image's 64 pixels refuses it too; the cache keeps them apart.
    tight = _bad_names(paths, mode="header", max_pixels=63, cache_key="k", cache_dir=tmp_path)
    assert set(tight) == {"huge.png", "small.png"}
    assert list(_bad_names(paths, mode="header", cache_key="k", cache_dir=tmp_path)) == ["huge.png"]

    # The full check judges the header first: the decoder never sees the file.
    def no_decode(path: Any, **kwargs: Any) -> Any:
        raise AssertionError("decoded")

    monkeypatch.setattr("trainer.data.decode.load_image", no_decode)
    assert "13377x13377" in str(pf.decode_problem(str(huge)))


def test_a_fifo_named_like_an_image_is_reported_without_being_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)  # opening it would block until a writer comes: the check must not
    Image.new("RGB", (8, 8)).save(tmp_path / "y.png")
    for mode, processes in (("header", 0), ("full", 1)):
        bad = _bad_names([fifo, tmp_path / "y.png"], mode=mode, processes=processes)
        assert list(bad) == ["x.jpg"] and "not a regular file" in bad["x.jpg"]


@pytest.mark.parametrize("processes", [1, 2])
def test_full_check_survives_every_malformed_file_and_names_the_crash(
    tmp_path: Path, processes: int
) -> None:
    files = _malformed(tmp_path)
    bad = _bad_names(list(files.values()), mode="full", processes=processes)
    crash = "{1}.{0}".format(*NATIVE_CRASH)
    assert "crashed the image decoder" in bad[crash] and "signal 11" in bad[crash]
    assert not {n for n in bad if n.startswith("good")}
    for ext in FORMATS:
        assert {f"truncated.{ext}", f"wrong_header.{ext}"} <= set(bad), ext


def test_a_crash_is_pinned_on_its_file_among_many(tmp_path: Path, monkeypatch: Any) -> None:
    make_tree(tmp_path / "t", {"a": 40, "b": 40}, size=(4, 4), splits=())
    paths = sorted((tmp_path / "t").rglob("*.*"))
    victims = {paths[5].name, paths[70].name}
    real = pf.decode_problem

    def decode_or_die(path: str, max_pixels: int) -> str | None:
        if Path(path).parent.name == "a" and Path(path).name in victims:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(path, max_pixels)

    monkeypatch.setattr(pf, "decode_problem", decode_or_die)  # the forked checkers inherit it
    monkeypatch.setattr(pf, "CHUNK", 8)
    result = preflight(paths, mode="full", processes=2)
    assert [paths[i] for i, _ in result.bad] == [
        p for p in paths if p.parent.name == "a" and p.name in victims
    ]
    assert all("signal 11" in r for _, r in result.bad)
    assert result.checked == len(paths)


def test_memory_is_bounded_two_chunks_per_process_in_flight(
    tmp_path: Path, monkeypatch: Any
) -> None:
    make_tree(tmp_path / "t", {"a": 30, "b": 30}, size=(4, 4), splits=())
    paths = sorted((tmp_path / "t").rglob("*.*"))
    in_flight = [0, 0]  # now, most

    class Counting(pf.ProcessPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
            future = super().submit(*args, **kwargs)
            future.add_done_callback(lambda _: in_flight.__setitem__(0, in_flight[0] - 1))
            return future

    monkeypatch.setattr(pf, "ProcessPoolExecutor", Counting)
    monkeypatch.setattr(pf, "CHUNK", 2)
    assert preflight(paths, mode="header", processes=2).checked == 60
    assert 1 <= in_flight[1] <= 4


def test_results_are_cached_by_path_size_and_mtime(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"a": 4, "b": 4}, size=(4, 4), splits=())
    paths = sorted(root.rglob("*.*"))
    cache = tmp_path / "cache"
    first = preflight(paths, mode="header", cache_key="k", cache_dir=cache)
    assert (first.checked, first.cached, first.bad) == (8, 0, [])
    again = preflight(paths, mode="header", cache_key="k", cache_dir=cache)
    assert (again.checked, again.cached) == (0, 8)
    # A changed file (new content, new mtime) is checked again, and only it.
    paths[3].write_bytes(b"broken now")
    changed = preflight(paths, mode="header", cache_key="k", cache_dir=cache)
    assert (changed.checked, [i for i, _ in changed.bad]) == (1, [3])
    # Same size, new content and mtime: checked again too.
    same_size = damage("png", "wrong_header", paths[4].read_bytes())
    st = paths[4].stat()
    paths[4].write_bytes(same_size)
    os.utime(paths[4], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert paths[4].stat().st_size == st.st_size
    retouched = preflight(paths, mode="header", cache_key="k", cache_dir=cache)
    assert (retouched.checked, [i for i, _ in retouched.bad]) == (1, [3, 4])
    # A new size under the old mtime (a copy that kept its timestamp): checked again too.
    st = paths[5].stat()
    paths[5].write_bytes(b"\x00" * 7)
    os.utime(paths[5], ns=(st.st_atime_ns, st.st_mtime_ns))
    resized = preflight(paths, mode="header", cache_key="k", cache_dir=cache)
    assert (resized.checked, [i for i, _ in resized.bad]) == (1, [3, 4, 5])
    # Another list of files under the same key: the unchanged ones still come from the cache.
    fewer = preflight(paths[2:], mode="header", cache_key="k", cache_dir=cache)
    assert (fewer.checked, [i for i, _ in fewer.bad]) == (0, [1, 2, 3])
    # A header check does not answer a request for a full one; a full one answers both.
    full = preflight(paths[2:], mode="full", processes=1, cache_key="k", cache_dir=cache)
    assert full.checked == 6
    assert preflight(paths[2:], mode="header", cache_key="k", cache_dir=cache).checked == 0


def test_cached_results_follow_the_path_not_the_position(tmp_path: Path) -> None:
    # Every file the same size and mtime, the bad one too: after a rename the same number of
    # files sort in another order, and only their paths tell which result is whose.
    root = tmp_path / "tree"
    good = good_bytes("png")
    for split, n in (("train", 4), ("val", 1)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{i}.png").write_bytes(good)
    bad = root / "train" / "a" / "1.png"
    bad.write_bytes(damage("png", "wrong_header", good))
    files = sorted(root.rglob("*.png"))
    assert len({p.stat().st_size for p in files}) == 1
    for p in files:
        os.utime(p, ns=(10**18, 10**18))
    assert [p for p, _ in small_data(root, max_bad_fraction=0.5).bad_files] == [bad]
    renamed = bad.rename(bad.with_name("9.png"))  # keeps its size and mtime
    data = small_data(root, max_bad_fraction=0.5)
    assert [p for p, _ in data.bad_files] == [renamed]
    assert renamed not in [p for p, _ in data.train_samples]


def test_a_file_corrupted_in_place_with_its_size_and_mtime_kept_is_checked_again(
    tmp_path: Path,
) -> None:
    # Bit rot, or a tool that puts the mtime back: size and mtime as they were, the ctime not.
    root = make_tree(tmp_path / "t", {"a": 2, "b": 2}, size=(4, 4), splits=())
    paths = sorted(root.rglob("*.png"))
    cache = tmp_path / "cache"
    assert preflight(paths, cache_key="k", cache_dir=cache).checked == len(paths)
    st = paths[0].stat()
    paths[0].write_bytes(damage("png", "wrong_header", paths[0].read_bytes()))
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (paths[0].stat().st_size, paths[0].stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = preflight(paths, cache_key="k", cache_dir=cache)
    assert (again.checked, [i for i, _ in again.bad]) == (1, [0])


def _rewrite_checks(stored: Path, how: str) -> None:
    """Rewrite the stored check results, damaged as ``how`` says, as a well-formed archive."""
    import io

    with np.load(stored) as f:
        z = {k: f[k] for k in f.files}
    header = json.loads(z["header"].tobytes())
    if how == "reason out of range":
        z["reason"] = np.full_like(z["reason"], 99)
    elif how == "level out of range":
        z["level"] = np.full_like(z["level"], 9)
    elif how == "arrays of unequal length":
        z["size"] = z["size"][:1]
    elif how == "reasons not a list":
        header["meta"] = {"a": 1}
    elif how == "paths not matching the arrays":
        z["paths"] = np.frombuffer(b"x\0y", np.uint8)
    elif how == "an array of another dtype":
        z["mtime"] = z["mtime"].astype(np.float64)
    z["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **z)
    stored.write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    "how",
    ["reason out of range", "level out of range", "arrays of unequal length",
     "reasons not a list", "paths not matching the arrays", "an array of another dtype"],
)  # fmt: skip
def test_a_crafted_cache_file_means_checking_again(tmp_path: Path, how: str) -> None:
    root = make_tree(tmp_path / "t", {"a": 2, "b": 2}, size=(4, 4), splits=())
    (root / "a" / "9.png").write_bytes(b"broken")
    paths = sorted(root.rglob("*.*"))
    cache = tmp_path / "cache"
    first = preflight(paths, cache_key="k", cache_dir=cache)
    (stored,) = cache.glob("*.npz")
    _rewrite_checks(stored, how)
    again = preflight(paths, cache_key="k", cache_dir=cache)
    assert (again.checked, again.bad) == (len(paths), first.bad)


def test_an_unwritable_cache_only_costs_a_second_check(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"a": 2, "b": 2}, size=(4, 4), splits=())
    paths = sorted(root.rglob("*.*"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for _ in range(2):
        assert preflight(paths, cache_key="k", cache_dir=blocker / "cache").checked == 4


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not a zip at all"])
def test_a_damaged_cache_file_means_checking_again(tmp_path: Path, content: bytes) -> None:
    root = make_tree(tmp_path / "t", {"a": 2, "b": 2}, size=(4, 4), splits=())
    paths = sorted(root.rglob("*.*"))
    cache = tmp_path / "cache"
    preflight(paths, cache_key="k", cache_dir=cache)
    (stored,) = cache.glob("*.npz")
    stored.write_bytes(content)
    assert preflight(paths, cache_key="k", cache_dir=cache).checked == 4
    assert preflight(paths, cache_key="k", cache_dir=cache).checked == 0  # written again


def test_check_chunk_reports_positions(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"nope")
    Image.new("RGB", (2, 2)).save(tmp_path / "y.png")
    assert [
        i for i, _ in check_chunk([str(tmp_path / "y.png"), str(tmp_path / "x.png")], False)
    ] == [1]


def _rank_checks(rank: int, world: int, port: int, paths: list[Path], out: Path) -> None:
    join_as_rank(rank, world, port)
    from trainer.distributed import destroy_distributed, init_distributed

    init_distributed("cpu")
    try:
        r = preflight(paths, mode="header", cache_key="ddp")
        (out / f"rank{rank}.json").write_text(json.dumps([r.checked, r.cached, r.bad]))
    finally:
        destroy_distributed()


def test_under_ddp_rank_zero_checks_and_the_others_read(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"a": 5, "b": 5}, size=(4, 4), splits=())
    (root / "a" / "9.png").write_bytes(b"broken")
    paths = sorted(root.rglob("*.*"))
    run_ranks(_rank_checks, paths, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    bad = [[paths.index(root / "a" / "9.png"), ranks[0][2][0][1]]]
    assert ranks[0][:2] == [11, 0] and ranks[1][:2] == [0, 11]
    assert ranks[0][2] == ranks[1][2] == bad


def test_check_splits_keys_the_cache_with_the_splits_encoded_paths(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # The splits hand their stored encoding to the cache instead of encoding every path again;
    # it must be exactly what encode_paths gives (the fast path of check_cache.load compares it).
    from trainer.data import check_cache
    from trainer.data.samples import SampleArray

    root = make_tree(tmp_path / "t", {"a": 2, "b": 1}, size=(4, 4), splits=())
    first = sorted((root / "a").iterdir())[0]
    first.rename(first.with_name("caf\u00e9 x" + first.suffix))
    files = sorted(p for p in root.rglob("*") if p.is_file())
    splits = {"train": SampleArray([(files[0], 0), (files[1], 0)]), "val": SampleArray([]),
              "test": SampleArray([(files[2], 1)])}  # fmt: skip
    seen: list[bytes] = []
    load = check_cache.load
    monkeypatch.setattr(check_cache, "load", lambda w, p, blob: seen.append(blob) or load(w, p, blob))
    kw: Any = dict(mode="header", processes=0, cache_key="k", cache_dir=tmp_path / "c",
                   max_bad_fraction=0.0, root=root)  # fmt: skip
    pf.check_splits(splits, **kw)
    assert seen == [check_cache.encode_paths([str(p) for p in files])]
    assert pf.check_splits(splits, **kw)[0]["train"] == splits["train"]


def _stat_spy(monkeypatch: Any) -> list[str]:
    """The paths each ``check_cache.stat_all`` call is given, from now on."""
    from trainer.data import check_cache

    seen: list[str] = []
    real = check_cache.stat_all
    monkeypatch.setattr(check_cache, "stat_all", lambda paths: seen.extend(paths) or real(paths))
    return seen


def test_a_warm_start_stats_only_the_files_whose_result_is_in_doubt(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # 120k stats were most of a warm start's own cost. On a tree just listed, a usable file's
    # result stands by its path; only a failure (it may be fixed) is looked at again.
    root = make_tree(tmp_path / "t", {"a": 4, "b": 4}, size=(8, 8))
    bad = root / "train" / "a" / "2.png"
    bad.write_bytes(b"not an image")
    cache = tmp_path / "cache"
    first = small_data(root, check_cache_dir=cache, max_bad_fraction=0.2)
    assert [p for p, _ in first.bad_files] == [bad]
    seen = _stat_spy(monkeypatch)
    again = small_data(root, check_cache_dir=cache, max_bad_fraction=0.2)
    assert seen == [str(bad)]
    assert again.bad_files == first.bad_files
    assert again.train_samples == first.train_samples
    # A file rewritten since its check: see test_scan_cache (the loader skips it).


def test_a_file_found_unusable_then_fixed_in_place_is_checked_again(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "t", {"a": 4, "b": 4}, size=(8, 8))
    bad = root / "train" / "a" / "2.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not an image")
    cache = tmp_path / "cache"
    assert [p for p, _ in small_data(root, check_cache_dir=cache, max_bad_fraction=0.2).bad_files] == [bad]
    bad.write_bytes(good)  # the same name, fixed: it must count again
    fixed = small_data(root, check_cache_dir=cache, max_bad_fraction=0.2)
    assert fixed.bad_files == [] and bad in [p for p, _ in fixed.train_samples]


def test_with_the_leakage_check_every_file_is_looked_at(tmp_path: Path, monkeypatch: Any) -> None:
    # A perceptual hash is of one version of a file: a stale one would find leaks that are not.
    root = make_tree(tmp_path / "t", {"a": 3, "b": 3}, size=(8, 8))
    cache = tmp_path / "cache"
    small_data(root, check_cache_dir=cache, check_leakage=True)
    seen = _stat_spy(monkeypatch)
    small_data(root, check_cache_dir=cache, check_leakage=True)
    assert len(seen) == 12
