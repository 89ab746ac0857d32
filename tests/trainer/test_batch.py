"""trainer/batch.py: a loader batch on the device, normalised there."""

from __future__ import annotations

import torch

from trainer.batch import BatchToDevice


def test_uint8_images_are_normalised_in_nhwc_and_floats_pass_through() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    move = BatchToDevice(torch.device("cpu"), mean, std, channels_last=True)
    images = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    x, y = move((images, torch.tensor([1, 0])))
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (images.float() / 255 - m) / s)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.tolist() == [1, 0]
    floats = torch.randn(2, 3, 4, 5)
    x, _ = move((floats, torch.tensor([0, 1])))
    torch.testing.assert_close(x, floats)  # already normalised: used as they come
