from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import hooks.sample_visualization as sample_visualization
from hooks.top_losses import TopLossesHook
from tests.conftest import StandInData, png_size, run_fit
from trainer.artifacts import ArtifactWriter
from trainer.state import EngineState


def _engine(data: StandInData, phase: str = "val") -> Any:
    state = EngineState(phase=phase, epoch=3, step=21)
    return SimpleNamespace(state=state, data=data, artifacts=ArtifactWriter(background=False))


def _validate(hook: TopLossesHook, engine: Any, logits: torch.Tensor, y: torch.Tensor) -> None:
    """One validation pass in batches of 5 (the last one short), as the engine calls it."""
    hook.on_validation_epoch_start(engine)
    for i, s in enumerate(range(0, len(y), 5)):
        out = {"loss": torch.tensor(0.0), "logits": logits[s : s + 5], "targets": y[s : s + 5]}
        hook.on_validation_batch_end(engine, out, (None, y[s : s + 5]), i)
    hook.on_validation_epoch_end(engine)
    engine.artifacts.flush()


def test_highest_losses_over_batches_with_labels_paths_and_files(tmp_path: Path) -> None:
    data = StandInData()  # 12 validation images: cat 5, dog 4, bird 3
    y = data.val_y
    logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    logits[7] = torch.tensor([0.0, -3.0, 6.0])  # a dog, called a bird with confidence: worst
    hook = TopLossesHook(tmp_path, num_images=4)
    engine = _engine(data)
    _validate(hook, engine, logits, y)
    per_image = F.cross_entropy(logits, y, reduction="none")
    expected = sorted(range(12), key=lambda i: -per_image[i].item())[:4]
    assert expected[0] == 7
    assert [t["index"] for t in hook.losses] == expected
    probs = logits.softmax(1)
    for t in hook.losses:
        i = t["index"]
        assert t["path"] == f"val/{i}.png"
        assert t["given"] == data.classes[y[i]] and t["given_index"] == y[i].item()
        assert t["predicted_index"] == probs[i].argmax().item()
        assert t["predicted"] == data.classes[t["predicted_index"]]
        assert t["loss"] == pytest.approx(per_image[i].item(), abs=1e-4)
        assert t["prob"] == pytest.approx(probs[i].max().item(), abs=1e-4)
    assert (hook.losses[0]["given"], hook.losses[0]["predicted"]) == ("dog", "bird")
    with open(tmp_path / "top_losses.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "given", "predicted", "loss", "prob", "index", "epoch", "step"]
    assert rows[1][:3] == ["val/7.png", "dog", "bird"]
    assert float(rows[1][3]) == pytest.approx(per_image[7].item(), abs=1e-4)
    assert rows[1][5:] == ["7", "3", "21"]
    assert len(rows) == 5
    w, h = png_size(tmp_path / "plots" / "top_losses.png")
    assert w >= 300 and h >= 250
    assert hook.figure is not None and hook.figure.size == (w, h)


def test_sanity_check_is_left_out(tmp_path: Path) -> None:
    hook = TopLossesHook(tmp_path)
    data = StandInData()
    _validate(hook, _engine(data, phase="sanity"), torch.zeros(12, 3), data.val_y)
    assert hook.losses == [] and not (tmp_path / "top_losses.csv").exists()


def test_ddp_shard_indices_map_to_the_whole_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 0 of 2 validates images 0, 2, 4, ...: its positions map back to those (a loader
    # that names no indices, as a custom data object's).
    monkeypatch.setattr(sample_visualization, "get_world_size", lambda: 2)
    data = StandInData()
    shard = data.val_y[0::2]
    logits = torch.zeros(6, 3)
    logits[4, (shard[4] + 1) % 3] = 9.0  # position 4 of the shard: image 8, wrong
    hook = TopLossesHook(tmp_path, num_images=1)
    _validate(hook, _engine(data), logits, shard)
    assert hook.losses[0]["index"] == 8
    assert hook.losses[0]["path"] == "val/8.png"
    assert hook.losses[0]["given"] == data.classes[data.val_y[8]]


def test_in_a_fit_matches_the_final_model(tmp_path: Path) -> None:
    data = StandInData()
    data.val_y = data.val_y.roll(4)  # labels the model cannot learn: high losses
    data.val_samples = [(p, int(t)) for (p, _), t in zip(data.val_samples, data.val_y, strict=True)]
    hook = TopLossesHook(tmp_path, num_images=5)
    engine = run_fit([hook], data, epochs=1)
    model = engine.eval_model.eval()
    m = torch.tensor(data.mean).view(1, 3, 1, 1)
    s = torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((data.val_x.float() / 255 - m) / s)
    per_image = F.cross_entropy(logits, data.val_y, reduction="none")
    expected = sorted(range(12), key=lambda i: -per_image[i].item())[:5]
    assert [t["index"] for t in hook.losses] == expected
    assert all(math.isclose(t["loss"], per_image[t["index"]].item(), abs_tol=1e-3)
               for t in hook.losses)  # fmt: skip


def test_num_images_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_images must be >= 1"):
        TopLossesHook(tmp_path, num_images=0)


def test_an_image_skipped_by_the_loader_shifts_no_row(tmp_path: Path) -> None:
    # A validation image whose header passes the start-up check but whose pixels do not
    # decode: the loader drops it from its batch. Every listed row must still name its own
    # image (path, label, loss), and the skipped one none.
    from hooks.sample_visualization import SampleVisualizationHook
    from tests.conftest import make_engine, make_tree
    from tests.trainer.data.conftest import small_data
    from tests.trainer.data.malformed import damage, good_bytes

    root = make_tree(tmp_path / "t", {"cat": 4, "dog": 4, "fox": 4}, size=(16, 16))
    bad = root / "val" / "cat" / "0a.png"  # second in validation order: every later one shifts
    bad.write_bytes(damage("png", "corrupt_data", good_bytes("png")))
    data = small_data(root, batch_size=5, max_bad_fraction=0.2)
    assert data.bad_files == []
    top = TopLossesHook(tmp_path / "run", num_images=13)
    vis = SampleVisualizationHook(tmp_path / "run", num_images=13)
    engine = make_engine([top, vis], data=data, max_epochs=1, sanity_steps=0)  # type: ignore[arg-type]
    engine.fit()
    assert str(bad) in data.bad_images.skipped
    paths = [str(p) for p, _ in data.val_samples]
    probs = engine.predict([Path(p) for p in paths if p != str(bad)])
    good = [p for p in paths if p != str(bad)]
    assert sorted(r["path"] for r in top.losses) == sorted(good)  # all 12, the bad one not
    for r in top.losses:
        assert Path(r["path"]).parent.name == r["given"]
        assert paths[r["index"]] == r["path"]
        p = probs[good.index(r["path"])]
        assert r["loss"] == pytest.approx(-math.log(p[r["given_index"]].item()), abs=2e-3)
    assert vis.mistakes and all(paths[m["index"]] != str(bad) for m in vis.mistakes)
    for m in vis.mistakes + vis.samples:
        i = good.index(paths[m["index"]])
        assert data.val_samples[m["index"]][1] == m["true"]
        assert m["pred"] == probs[i].argmax().item()
        assert m["prob"] == pytest.approx(probs[i].max().item(), abs=2e-3)
