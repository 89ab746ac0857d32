"""The extra training augmentation (trainer.data.augment): each operation is in the pipeline,
is drawn from the image's own seed (reproducible, so resume stays exact), and bad values or
the GPU path are refused with the flag named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer.data.conftest import small_data
from trainer.data.augment import Augment
from trainer.data.transforms import train_transform
from trainer.errors import ConfigError
from trainer.rng import torch_seeded

# Each operation at full strength (probability 1 where it has one).
EACH = {
    "randaugment": Augment(auto_augment="randaugment"),
    "trivialaugment": Augment(auto_augment="trivialaugment"),
    "autoaugment": Augment(auto_augment="autoaugment"),
    "augmix": Augment(auto_augment="augmix"),
    "random_erasing": Augment(random_erasing=1.0),
    "jpeg_quality": Augment(jpeg_quality=5),
    "blur": Augment(blur=1.0),
    "noise": Augment(noise=1.0),
    "downscale": Augment(downscale=0.2),
    "affine": Augment(affine=1.0),
    "perspective": Augment(perspective=1.0),
}


def textured(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8, generator=g)


def run(augment: Augment | None, seed: int, img: torch.Tensor) -> torch.Tensor:
    t = train_transform(32, crop_scale=0.5, augment=augment)
    with torch_seeded(seed):
        return t(img)


@pytest.mark.parametrize("name", sorted(EACH))
def test_each_operation_changes_the_image_and_is_drawn_from_its_seed(name: str) -> None:
    img, augment = textured(), EACH[name]
    changed, seeds_differ = 0, False
    for seed in range(6):
        out = run(augment, seed, img)
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
        assert torch.equal(out, run(augment, seed, img))  # same seed, same image
        # The crop and flip draw first, so the plain pipeline under the same seed is the
        # same image without the operation.
        changed += not torch.equal(out, run(None, seed, img))
        seeds_differ |= not torch.equal(out, run(augment, seed + 100, img))
    assert changed >= 3, f"{name} left the image as the plain pipeline made it"
    assert seeds_differ


def test_augmentation_reproduces_in_a_loader_with_workers(tiny_tree: Path) -> None:
    """Per-image seeds: the same epoch is drawn the same with 0 and 2 workers."""
    augment = Augment(auto_augment="randaugment", random_erasing=0.5, jpeg_quality=40,
                      noise=0.5, downscale=0.5, affine=0.5, perspective=0.5, blur=0.5)  # fmt: skip
    epochs = []
    for workers in (0, 2):
        data = small_data(tiny_tree, augment=augment, workers=workers)
        data.sampler.set_epoch(1)
        epochs.append(torch.cat([x for x, _ in data.train_loader()]))
    assert torch.equal(epochs[0], epochs[1])


def test_a_loader_without_workers_leaves_the_callers_random_stream_alone(tiny_tree: Path) -> None:
    """With 0 workers each image is augmented in this process, under its own seed: the
    caller's torch stream (dropout's, the next epoch's) goes on as if no image was drawn."""
    data = small_data(tiny_tree, augment=Augment(random_erasing=0.5), workers=0)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert len(list(data.train_loader())) == len(data.train_loader()) > 0
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(
    ("augment", "flag"),
    [
        (Augment(auto_augment="fancy"), "--auto-augment"),
        (Augment(random_erasing=1.5), "--random-erasing"),
        (Augment(jpeg_quality=101), "--jpeg-quality"),
        (Augment(blur=-0.1), "--blur"),
        (Augment(noise=2.0), "--noise"),
        (Augment(downscale=1.0), "--downscale"),
        (Augment(affine=1.1), "--affine"),
        (Augment(perspective=-1.0), "--perspective"),
        (Augment(mixup=-0.2), "--mixup"),
        (Augment(cutmix=-1.0), "--cutmix"),
    ],
)
def test_bad_values_are_config_errors_naming_the_flag(
    tiny_tree: Path, augment: Augment, flag: str
) -> None:
    with pytest.raises(ConfigError, match=flag):
        small_data(tiny_tree, augment=augment)


def test_gpu_decoding_refuses_per_image_augmentation_but_not_mixing(tiny_tree: Path) -> None:
    with pytest.raises(ConfigError, match="--decode gpu") as e:
        small_data(tiny_tree, decode="gpu", augment=Augment(auto_augment="augmix", blur=0.5))
    assert "--auto-augment" in str(e.value) and "--blur" in str(e.value)
    data = small_data(tiny_tree, decode="gpu", augment=Augment(mixup=0.2, cutmix=1.0))
    assert data.batch_mix is not None


def test_batch_mix_is_handed_out_only_when_mixing(tiny_tree: Path) -> None:
    assert small_data(tiny_tree).batch_mix is None
    assert small_data(tiny_tree, augment=Augment(random_erasing=0.5)).batch_mix is None
    mix = small_data(tiny_tree, augment=Augment(cutmix=1.0)).batch_mix
    assert mix is not None and mix.cutmix == 1.0 and mix.num_classes == 3
