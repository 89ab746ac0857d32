"""Fixtures for the hook tests; the stand-in data itself lives in ``standin.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from .standin import StandInData


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # 16-pixel batches gain nothing from intra-op threads, and on a busy 2-core machine the
    # threads' spin-waits made this suite four times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data() -> StandInData:
    """3 classes (train 12/7/3, val 5/4/3), 16x16 uint8 images, balanced tracking sampler."""
    return StandInData()
