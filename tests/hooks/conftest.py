"""Fixtures for the hook tests; the stand-in data itself lives in ``standin.py``."""

from __future__ import annotations

import pytest

from .standin import StandInData


@pytest.fixture
def data() -> StandInData:
    """3 classes (train 12/7/3, val 5/4/3), 16x16 uint8 images, balanced tracking sampler."""
    return StandInData()
