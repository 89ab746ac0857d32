from __future__ import annotations

import pytest
import torch

from trainer.data.sampler import SeededDraw, TrackingWeightedRandomSampler

# 80 / 15 / 5 samples of classes 0 / 1 / 2.
TARGETS = [0] * 80 + [1] * 15 + [2] * 5


def test_balanced_draws_classes_about_equally() -> None:
    s = TrackingWeightedRandomSampler(TARGETS, 3, mode="balanced", num_samples=3000)
    idx = list(s)
    assert len(idx) == len(s) == 3000
    assert s.last_indices.dtype == torch.int64
    assert s.last_indices.tolist() == idx
    assert sum(s.class_counts) == 3000
    assert s.expected_counts == pytest.approx([1000.0, 1000.0, 1000.0])
    assert all(800 < c < 1200 for c in s.class_counts)
    # The record matches what was really drawn.
    drawn = torch.bincount(torch.tensor(TARGETS)[torch.tensor(idx)], minlength=3).tolist()
    assert drawn == s.class_counts


def test_none_is_a_permutation_without_replacement() -> None:
    s = TrackingWeightedRandomSampler(TARGETS, 3, mode="none", seed=1)
    idx = list(s)
    assert sorted(idx) == list(range(len(TARGETS)))
    assert s.class_counts == [80, 15, 5]
    assert s.expected_counts == pytest.approx([80.0, 15.0, 5.0])
    longer = TrackingWeightedRandomSampler(TARGETS, 3, mode="none", num_samples=250)
    assert len(list(longer)) == 250


def test_manual_weights_and_missing_classes_default_to_one() -> None:
    s = TrackingWeightedRandomSampler(
        TARGETS, 3, mode="manual", class_weights={0: 0.0, 2: 3.0}, num_samples=400
    )
    list(s)
    assert s.class_counts[0] == 0
    # Class 1: 15 samples * 1.0, class 2: 5 * 3.0 -> equal shares.
    assert s.expected_counts == pytest.approx([0.0, 200.0, 200.0])


@pytest.mark.parametrize(
    ("weights", "match"),
    [({1: -1.0}, r"class_weights\[1\]"), ({7: 1.0}, "class 7"), ({0: 0.0, 1: 0.0, 2: 0.0}, "0")],
)
def test_bad_manual_weights(weights: dict[int, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrackingWeightedRandomSampler(TARGETS, 3, mode="manual", class_weights=weights)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        TrackingWeightedRandomSampler(TARGETS, 3, mode="inverse")
    with pytest.raises(ValueError, match="targets"):
        TrackingWeightedRandomSampler([0, 5], 3)
    with pytest.raises(ValueError, match="at least one"):
        TrackingWeightedRandomSampler([], 3)


def test_epochs_are_deterministic_and_distinct() -> None:
    a = TrackingWeightedRandomSampler(TARGETS, 3, seed=5)
    b = TrackingWeightedRandomSampler(TARGETS, 3, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    a.set_epoch(2)
    b.set_epoch(3)
    assert list(a) != list(b)


def test_successive_iterations_differ_without_set_epoch() -> None:
    s = TrackingWeightedRandomSampler(TARGETS, 3, seed=0)
    first, second = list(s), list(s)
    assert first != second
    s.set_epoch(0)
    assert list(s) == first


def test_state_dict_resumes_the_same_draw() -> None:
    s = TrackingWeightedRandomSampler(TARGETS, 3, seed=9)
    s.set_epoch(4)
    list(s)
    state = s.state_dict()
    assert all(isinstance(v, (int, str)) for v in state.values())
    expected = list(s)
    resumed = TrackingWeightedRandomSampler(TARGETS, 3, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == expected


@pytest.mark.parametrize("mode", ["none", "balanced"])
def test_two_ranks_split_the_single_process_draw(mode: str) -> None:
    single = TrackingWeightedRandomSampler(TARGETS, 3, mode=mode, seed=3)
    ranks = [
        TrackingWeightedRandomSampler(TARGETS, 3, mode=mode, seed=3, num_replicas=2, rank=r)
        for r in range(2)
    ]
    for s in (single, *ranks):
        s.set_epoch(1)
    full = list(single)
    parts = [list(r) for r in ranks]
    assert [len(p) for p in parts] == [len(r) for r in ranks] == [50, 50]
    assert sorted(parts[0] + parts[1]) == sorted(full)
    assert parts[0] == full[0::2] and parts[1] == full[1::2]
    counts = [r.class_counts for r in ranks]
    assert [a + b for a, b in zip(*counts, strict=True)] == single.class_counts


def test_uneven_ranks_are_padded_to_equal_length() -> None:
    ranks = [TrackingWeightedRandomSampler([0, 1, 0], 2, num_replicas=2, rank=r) for r in range(2)]
    assert [len(list(r)) for r in ranks] == [2, 2]


def test_seeded_draw_seeds_depend_on_seed_epoch_and_global_position_only() -> None:
    def draw(replicas: int, rank: int, epoch: int, seed: int = 0) -> list[tuple[int, int]]:
        s = SeededDraw(TrackingWeightedRandomSampler(
            TARGETS, 3, mode="balanced", seed=seed, num_replicas=replicas, rank=rank))
        s.set_epoch(epoch)
        return list(s)  # fmt: skip

    single = draw(1, 0, epoch=2)
    plain = TrackingWeightedRandomSampler(TARGETS, 3, mode="balanced")
    plain.set_epoch(2)
    assert [i for i, _ in single] == list(plain)  # the indices are the sampler's own draw
    assert single == draw(1, 0, epoch=2)  # and the seeds a function of (seed, epoch, position)
    # Two ranks together carry the single process's (index, seed) pairs, position by position.
    shards = [draw(2, r, epoch=2) for r in range(2)]
    assert [p for pair in zip(*shards, strict=True) for p in pair] == single
    # A balanced draw repeats indices; every position still gets its own seed.
    assert len({seed for _, seed in single}) == len(single)
    assert {seed for _, seed in draw(1, 0, epoch=3)}.isdisjoint(seed for _, seed in single)
    assert draw(1, 0, epoch=2, seed=1) != single
    # Without set_epoch each iter() acts as the next epoch: new seeds too.
    again = SeededDraw(TrackingWeightedRandomSampler(TARGETS, 3, mode="balanced"))
    first, second = list(again), list(again)
    assert {seed for _, seed in first}.isdisjoint(seed for _, seed in second)
