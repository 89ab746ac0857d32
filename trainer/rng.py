"""Seeding, and the random state of Python, NumPy and torch as checkpointable data."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a fixed function of ``parts`` (e.g. run seed and epoch): the same
    on every machine and in every process, and unrelated for neighbouring inputs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Run the block on torch's CPU generator seeded with ``seed``, then give the caller its
    own stream back: what the block draws depends on ``seed`` alone, and the caller's later
    draws do not depend on the block."""
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states as tensors and plain data (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_rng_state(ckpt: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """This rank's RNG state in a checkpoint; None when it was saved by another number of
    processes (or holds none), so the streams cannot continue."""
    per_rank = ckpt.get("rng_per_rank")
    if per_rank is not None:
        return per_rank[rank] if len(per_rank) == world_size else None
    return ckpt.get("rng") if world_size == 1 else None
