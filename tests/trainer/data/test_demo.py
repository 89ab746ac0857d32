from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tree_digest
from trainer.data import ImageFolderData
from trainer.data.demo import DEMO_CLASSES, MARKER, TRAIN_COUNTS, default_demo_root, demo_dataset
from trainer.errors import DataError


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_dataset(tmp_path_factory.mktemp("demo") / "shapes")


def test_generation_is_deterministic(demo_root: Path, tmp_path: Path) -> None:
    again = demo_dataset(tmp_path / "again")
    assert tree_digest(again) == tree_digest(demo_root)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # temp folder gone


def test_loads_imbalanced_with_png_and_jpeg(demo_root: Path) -> None:
    data = ImageFolderData(demo_root, img_size=64, batch_size=32, workers=0)
    assert data.classes == sorted(DEMO_CLASSES) and len(data.classes) >= 5
    counts = dict(zip(data.classes, data.class_counts["train"], strict=True))
    assert [counts[c] for c in DEMO_CLASSES] == list(TRAIN_COUNTS)
    assert max(counts.values()) >= 4 * min(counts.values())
    assert all(n >= 30 for n in data.class_counts["val"])
    assert data.bad_files == [] and data.ignored_files == []
    suffixes = {p.suffix for p, _ in data.train_samples}
    assert suffixes == {".png", ".jpg"}
    images, targets = next(iter(data.val_loader()))
    assert images.shape == (32, 3, 64, 64) and targets.shape == (32,)


def test_a_complete_dataset_is_reused(demo_root: Path) -> None:
    before = (demo_root / MARKER).stat().st_mtime_ns
    assert demo_dataset(demo_root) == demo_root
    assert (demo_root / MARKER).stat().st_mtime_ns == before


def test_a_foreign_folder_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a complete demo dataset"):
        demo_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_default_root_respects_the_cache_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGTRAINER_CACHE", str(tmp_path))
    assert default_demo_root() == tmp_path / "demo_shapes_v1"
    monkeypatch.delenv("IMGTRAINER_CACHE")
    assert default_demo_root() == Path.home() / ".cache" / "imgtrainer" / "demo_shapes_v1"
