"""``Engine.predict``: probabilities from loaders, folders, paths and PIL images, with the
validation transform, the EMA weights, autocast and the predict hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import StandInData, make_engine, make_tree, tree_digest
from trainer.data import eval_preprocess, load_image
from trainer.data.transforms import EvalResize
from trainer.engine import Engine
from trainer.errors import UserError
from trainer.hook import Hook
from trainer.predict import predict_paths


def _expected(
    engine: Engine, images: torch.Tensor, model: torch.nn.Module | None = None
) -> torch.Tensor:
    """Softmax of ``model`` (default the eval model) on uint8 images normalised by hand."""
    data: Any = engine.data
    m = torch.tensor(data.mean).view(1, 3, 1, 1)
    s = torch.tensor(data.std).view(1, 3, 1, 1)
    net = model or engine.eval_model
    was_training = net.training
    with torch.no_grad():
        out = net.eval()((images.float() / 255 - m) / s).float().softmax(1)
    net.train(was_training)
    return out


@pytest.fixture(scope="module")
def trained() -> Engine:
    engine = make_engine(data=StandInData(), max_epochs=1, sanity_steps=0, ema_decay=0.5)
    engine.fit()
    return engine


def test_from_a_loader_the_ema_weights_give_the_probabilities(trained: Engine) -> None:
    data: Any = trained.data
    probs = trained.predict(data.val_loader())
    assert probs.shape == (len(data.val_y), 3) and probs.device.type == "cpu"
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-5)
    assert torch.allclose(probs, _expected(trained, data.val_x), atol=1e-5)
    raw = _expected(trained, data.val_x, model=trained.model)
    assert not torch.allclose(probs, raw, atol=1e-4)  # the EMA weights, not the raw ones
    assert trained.state.phase == "idle"


def test_images_only_batches_and_tensor_batches(trained: Engine) -> None:
    data: Any = trained.data
    expected = _expected(trained, data.val_x)
    as_tensors = trained.predict(list(data.val_x.split(4)))
    as_tuples = trained.predict([(x,) for x in data.val_x.split(4)])
    assert torch.allclose(as_tensors, expected, atol=1e-5)
    assert torch.allclose(as_tuples, expected, atol=1e-5)


def test_folder_paths_and_pil_images_use_the_validation_transform(
    trained: Engine, tmp_path: Path
) -> None:
    # 20x16 images: resized and centre-cropped to the data's 16x16, as validation does.
    root = make_tree(tmp_path / "imgs", {"a": 3, "b": 2}, splits=())
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.new("RGB", (20, 16)).save(root / ".hidden" / "x.png")
    before = tree_digest(root, mtimes=True)
    paths = predict_paths(root)
    assert [p.relative_to(root).as_posix() for p in paths] == [
        "a/0.png", "a/1.jpg", "a/2.png", "b/0.png", "b/1.jpg"
    ]  # fmt: skip
    batch = torch.stack([eval_preprocess(load_image(p), 16) for p in paths])
    expected = _expected(trained, batch)
    by_folder = trained.predict(root, batch_size=2)
    assert torch.allclose(by_folder, expected, atol=1e-5)
    assert torch.allclose(trained.predict([str(p) for p in paths]), expected, atol=1e-5)
    pil = [Image.open(p) for p in paths]
    mixed = [pil[0], paths[1], *pil[2:]]
    assert torch.allclose(trained.predict(mixed), expected, atol=1e-5)
    arrays = [np.asarray(p.convert("RGB")) for p in pil]  # uint8 HWC, as OnnxClassifier takes
    arrays[0] = arrays[0][:, :, 0]  # and HW: grey, repeated
    grey = eval_preprocess(load_image(paths[0]), 16)[:1].expand(3, -1, -1)
    expected[0] = _expected(trained, grey[None])[0]
    assert torch.allclose(trained.predict(arrays), expected, atol=1e-5)
    assert torch.allclose(trained.predict(paths[3]), expected[3:4], atol=1e-5)
    assert tree_digest(root, mtimes=True) == before  # user data is only read


def test_autocast_is_used() -> None:
    data = StandInData()
    fp32 = make_engine(data=data, max_epochs=1)
    bf16 = make_engine(data=data, max_epochs=1, precision="bf16-mixed")
    bf16.model.load_state_dict(fp32.model.state_dict())
    p32, p16 = fp32.predict(data.val_loader()), bf16.predict(data.val_loader())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _expected(bf16, data.val_x)
    assert torch.allclose(p16, expected, atol=1e-6)
    assert not torch.equal(p16, p32)


def test_predict_hooks_get_the_batch_on_the_device_and_the_outputs() -> None:
    seen: list[Any] = []

    class Spy(Hook):
        def on_predict_batch_start(self, engine: Engine, batch: Any, batch_idx: int) -> None:
            seen.append(("start", batch_idx, batch[0].dtype, engine.state.phase))

        def on_predict_batch_end(self, engine: Engine, outputs: Any, batch: Any, i: int) -> None:
            seen.append(("end", i, sorted(outputs), outputs["probs"].shape))

    data = StandInData()
    engine = make_engine([Spy()], data=data)
    assert engine.model.training
    engine.predict(data.val_loader())
    assert engine.model.training  # in eval mode for predict only
    assert seen[0] == ("start", 0, torch.float32, "predict")  # normalised on the device
    assert seen[1] == ("end", 0, ["logits", "probs"], (5, 3))
    assert len(seen) == 2 * 3  # 12 images in batches of 5


def test_bad_sources_name_the_problem(trained: Engine, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.png"):
        trained.predict([tmp_path / "missing.png"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images in .*empty"):
        trained.predict(empty)
    with pytest.raises(UserError, match="batch_size"):
        trained.predict(empty, batch_size=0)


def test_an_unreadable_file_gets_a_nan_row_and_a_warning(
    trained: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_tree(tmp_path / "imgs", {"a": 3}, splits=())
    (root / "a" / "1b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    paths = predict_paths(root)
    assert [p.name for p in paths] == ["0.png", "1.jpg", "1b.png", "2.png"]
    good = [0, 1, 3]
    batch = torch.stack([eval_preprocess(load_image(paths[i]), 16) for i in good])
    with caplog.at_level("WARNING", logger="trainer"):
        probs = trained.predict(root, batch_size=2)  # the bad file shares a batch with a good one
    assert probs.shape == (4, 3)
    assert probs.isnan().any(1).tolist() == [False, False, True, False]
    assert torch.allclose(probs[good], _expected(trained, batch), atol=1e-5)  # rows kept
    assert "1b.png" in caplog.text and "cannot decode" in caplog.text
    assert trained.predict([root / "a" / "1b.png"]).isnan().all()  # a batch of none readable


def test_paths_need_the_image_size() -> None:
    data = StandInData()
    engine = make_engine(data=data)
    del data.img_size  # a data source with loaders only
    with pytest.raises(UserError, match="img_size"):
        engine.predict([Image.fromarray(np.zeros((16, 16, 3), np.uint8))])


def test_tta_flip_averages_each_image_and_its_mirror(trained: Engine) -> None:
    data: Any = trained.data
    probs = trained.predict(data.val_loader(), tta="flip")
    plain = _expected(trained, data.val_x)
    expected = (plain + _expected(trained, data.val_x.flip(-1))) / 2
    assert torch.allclose(probs, expected, atol=1e-5) and not torch.allclose(probs, plain, atol=1e-3)
    # Images alone (the path that files and PIL images take too).
    assert torch.allclose(trained.predict([data.val_x[:3]], tta="flip"), expected[:3], atol=1e-5)
    with pytest.raises(UserError, match=r"tta must be one of none, flip.*'mirror'"):
        trained.predict(data.val_loader(), tta="mirror")


@pytest.mark.parametrize("resize", [EvalResize(16, 1.0), EvalResize(16, 1.0, "squash")])
def test_paths_and_pil_images_get_the_datas_crop_pct_and_resize_mode(
    trained: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resize: EvalResize
) -> None:
    monkeypatch.setattr(trained.data, "eval_resize", resize, raising=False)
    paths = predict_paths(make_tree(tmp_path / "imgs", {"a": 2}, size=(24, 16), splits=()))
    expected = _expected(trained, torch.stack([eval_preprocess(load_image(p), resize) for p in paths]))
    default = _expected(trained, torch.stack([eval_preprocess(load_image(p), 16) for p in paths]))
    assert torch.allclose(trained.predict(paths), expected, atol=1e-5)
    assert torch.allclose(trained.predict([Image.open(p) for p in paths]), expected, atol=1e-5)
    assert not torch.allclose(expected, default, atol=1e-3)


def test_tta_flip_of_a_multilabel_task_averages_the_sigmoids() -> None:
    from tests.conftest import MultiLabelStandIn

    engine = make_engine(data=MultiLabelStandIn(), sanity_steps=0)  # its untrained weights
    data: Any = engine.data
    m, s = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        net = engine.eval_model.eval()
        plain, mirrored = (net((x.float() / 255 - m) / s).float().sigmoid()
                           for x in (data.val_x, data.val_x.flip(-1)))  # fmt: skip
    probs = engine.predict(data.val_loader(), tta="flip")
    assert torch.allclose(probs, (plain + mirrored) / 2, atol=1e-6)
    assert torch.allclose(engine.predict(data.val_loader()), plain, atol=1e-6)
    assert not torch.allclose(probs, plain, atol=1e-4)
