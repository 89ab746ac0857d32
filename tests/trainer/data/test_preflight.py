"""The start-up check: headers or full decodes, in bounded parallel chunks, native crashes
contained, results cached by (path, size, mtime) and shared by DDP ranks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

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


def test_the_fast_jpeg_header_walk_gives_pillows_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _jpegs(tmp_path)
    fast = {p.name: pf.header_problem(str(p)) is None for p in files}
    monkeypatch.setattr(pf, "_jpeg_size", lambda head: None)  # every file to Pillow
    assert fast == {p.name: pf.header_problem(str(p)) is None for p in files}
    assert fast["good.jpg"] and fast["progressive.jpg"] and not fast["wrong_header.jpg"]
    assert not fast["twelve_bit.jpg"] and not fast["two_layers.jpg"]


def test_a_plain_jpeg_passes_without_pillow_and_a_bomb_still_goes_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.jpg")
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")

    def no_pillow(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Pillow opened the file")

    monkeypatch.setattr(Image, "open", no_pillow)
    assert pf.header_problem(str(tmp_path / "a.jpg")) is None
    assert "Pillow opened" in str(pf.header_problem(str(tmp_path / "a.png")))
    monkeypatch.undo()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40 x 30 = 1,200 pixels
    assert "too large" in str(pf.header_problem(str(tmp_path / "a.jpg")))


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

    def decode_or_die(path: str) -> str | None:
        if Path(path).parent.name == "a" and Path(path).name in victims:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(path)

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
