"""A weighted random sampler that remembers what it drew, resumable and DDP-aware."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from trainer.distributed import all_gather_object
from trainer.errors import ConfigError
from trainer.rng import derive_seed

SAMPLER_MODES: tuple[str, ...] = ("none", "balanced", "manual")


class TrackingWeightedRandomSampler(Sampler[int]):
    """Draws an epoch of sample indices by class weight and records what it drew.

    The whole epoch is drawn at once from a fresh generator seeded with ``seed + epoch``, so the
    sampler's state is two integers and a resumed run draws exactly what the original would have.
    After each ``iter()`` the draw is kept for observability hooks: ``last_indices`` (this rank's
    indices), ``class_counts`` (how many of each class this rank drew) and ``expected_counts``
    (what the weights predict for those draws).

    Modes:
        ``"none"``: a seeded permutation, without replacement (plain shuffling, but recorded).
        ``"balanced"``: with replacement, each sample weighted ``1 / count(its class)``, so every
        class is drawn about equally often.
        ``"manual"``: with replacement, each sample weighted ``class_weights[its class]``
        (classes not listed weigh 1.0).

    Distributed: with ``num_replicas > 1`` every rank makes the same global draw (same seed), pads
    it by wrapping to a multiple of ``num_replicas`` so all ranks run the same number of steps, and
    rank ``r`` takes ``indices[r::num_replicas]``: the shards never overlap (beyond the padding)
    and their union is the single-process draw of the same seed and epoch. Mode "none" then
    yields exactly what ``torch.utils.data.DistributedSampler(shuffle=True, seed=seed)`` yields
    (same generator seeding, permutation, padding and split), with the draw recorded.
    ``global_class_counts()`` and ``global_indices()`` gather the other ranks' shares.

    The engine calls ``set_epoch`` every epoch. Without it, each further ``iter()`` acts as if
    the epoch had advanced, so successive epochs still differ.

    Args:
        targets: the class index of every sample.
        num_classes: number of classes (classes with no sample are allowed).
        mode: "none", "balanced" or "manual".
        class_weights: class index -> weight, for mode "manual".
        num_samples: indices drawn per epoch across all ranks; defaults to ``len(targets)``.
        seed: base seed; the epoch's generator is seeded with ``seed + epoch``.
        num_replicas: number of processes sharing the draw.
        rank: this process's index among them.

    Example:
        >>> s = TrackingWeightedRandomSampler([0, 0, 0, 1], num_classes=2, mode="balanced")
        >>> s.set_epoch(3)
        >>> idx = list(s)
        >>> sum(s.class_counts) == len(idx) == 4
        True
    """

    def __init__(
        self,
        targets: Sequence[int],
        num_classes: int,
        *,
        mode: str = "balanced",
        class_weights: dict[int, float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if mode not in SAMPLER_MODES:
            raise ValueError(f"sampler mode must be one of {SAMPLER_MODES}, got {mode!r}.")
        if len(targets) == 0:
            raise ValueError("TrackingWeightedRandomSampler needs at least one target, got none.")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, "
                             f"got num_replicas={num_replicas}, rank={rank}.")
        self.targets = torch.as_tensor(list(targets), dtype=torch.int64)
        if int(self.targets.min()) < 0 or int(self.targets.max()) >= num_classes:
            raise ValueError(f"targets must lie in [0, {num_classes}), found values from "
                             f"{int(self.targets.min())} to {int(self.targets.max())}.")
        self.num_classes = num_classes
        self.mode = mode
        self.num_samples = len(targets) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}.")
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        # Iterations since the last set_epoch; keeps epochs distinct when nobody calls set_epoch.
        self._iterations = 0

        self.weights = self._sample_weights(class_weights or {})
        class_weight_sum = torch.zeros(num_classes, dtype=torch.float64)
        class_weight_sum.index_add_(0, self.targets, self.weights)
        self._class_share = (class_weight_sum / class_weight_sum.sum()).tolist()

        self.last_indices: torch.Tensor = torch.empty(0, dtype=torch.int64)
        self.last_epoch = 0  # the epoch of the last draw (set_epoch's, or advanced by iter())
        self.class_counts: list[int] = [0] * num_classes
        self.expected_counts: list[float] = [s * len(self) for s in self._class_share]

    def _sample_weights(self, class_weights: dict[int, float]) -> torch.Tensor:
        counts = torch.bincount(self.targets, minlength=self.num_classes).to(torch.float64)
        if self.mode == "none":
            return torch.ones(len(self.targets), dtype=torch.float64)
        if self.mode == "balanced":
            return (1.0 / counts)[self.targets]
        per_class = torch.ones(self.num_classes, dtype=torch.float64)
        for cls, w in class_weights.items():
            if not 0 <= cls < self.num_classes:
                raise ValueError(f"class_weights names class {cls}, but classes are "
                                 f"0..{self.num_classes - 1}.")
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"class_weights[{cls}] is {w}; weights must be finite and >= 0.")
            per_class[cls] = float(w)
        weights = per_class[self.targets]
        if float(weights.sum()) <= 0:
            raise ConfigError(
                "class_weights (--class-weights) give every training image weight 0, so nothing "
                "could be drawn; give at least one class present in training a weight above 0."
            )
        return weights

    def set_replicas(self, num_replicas: int, rank: int) -> None:
        """Shard the next draws over ``num_replicas`` processes, this one being ``rank``."""
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, "
                             f"got num_replicas={num_replicas}, rank={rank}.")
        self.num_replicas, self.rank = num_replicas, rank
        self.expected_counts = [s * len(self) for s in self._class_share]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw the next ``iter()`` makes."""
        self.epoch = int(epoch)
        self._iterations = 0

    def _global_draw(self) -> torch.Tensor:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch + self._iterations)
        n = self.num_samples
        if self.mode == "none":
            # Enough permutations to cover n, so num_samples > len(targets) still works.
            reps = math.ceil(n / len(self.targets))
            perms = [torch.randperm(len(self.targets), generator=g) for _ in range(reps)]
            return torch.cat(perms)[:n]
        return torch.multinomial(self.weights, n, replacement=True, generator=g)

    def __iter__(self) -> Iterator[int]:
        indices = self._global_draw()
        if self.num_replicas > 1:
            total = len(self) * self.num_replicas
            indices = indices.repeat(math.ceil(total / len(indices)))[:total]
            indices = indices[self.rank :: self.num_replicas]
        self.last_epoch = self.epoch + self._iterations
        self._iterations += 1
        self.last_indices = indices
        self.class_counts = torch.bincount(
            self.targets[indices], minlength=self.num_classes
        ).tolist()
        self.expected_counts = [s * len(indices) for s in self._class_share]
        return iter(indices.tolist())

    @property
    def global_expected_counts(self) -> list[float]:
        """What the weights predict per class for the draw of all ranks together (padding too)."""
        return [s * len(self) * self.num_replicas for s in self._class_share]

    def global_class_counts(self) -> list[int]:
        """Per-class counts of the last draw summed over all ranks; a collective under DDP.

        Every rank must call it. A single process gets its own ``class_counts``.
        """
        per_rank = all_gather_object(self.class_counts)
        return [sum(c) for c in zip(*per_rank, strict=True)]

    def global_indices(self) -> torch.Tensor:
        """The last draw of all ranks, in the global order (padding included); a collective.

        Rank ``r``'s shard is every ``num_replicas``-th index from ``r``, so interleaving the
        shards rebuilds the global draw.
        """
        shards = all_gather_object(self.last_indices)
        return torch.stack(shards, dim=1).flatten() if len(shards) > 1 else shards[0]

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "iterations": self._iterations,
                "num_samples": self.num_samples, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._iterations = int(state.get("iterations", 0))


class SeededDraw(Sampler[tuple[int, int]]):
    """``sampler``'s draw, each index paired with the seed of its augmentation.

    A sample's seed is a function of (the sampler's seed, the epoch, the sample's position in
    the epoch's global draw) and nothing else. ``ImageListDataset`` runs the transform on
    torch's generator seeded with it, so what an image gets (crop, flip, jitter) depends
    neither on which loader worker serves it, nor on how many there are, nor on what the
    workers drew before: a resumed epoch draws exactly what the straight run drew, although
    its workers are new. Under DDP rank ``r`` holds positions ``r, r + N, ...`` of the global
    draw, so the ranks together augment exactly as one process would.

    ``set_epoch``, ``state_dict`` and ``load_state_dict`` are ``sampler``'s.

    Args:
        sampler: the tracking sampler whose draw is served.

    Example:
        >>> s = SeededDraw(TrackingWeightedRandomSampler([0, 1, 1], 2, mode="none"))
        >>> [i for i, _ in s] == s.sampler.last_indices.tolist()
        True
    """

    def __init__(self, sampler: TrackingWeightedRandomSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        s = self.sampler
        indices = list(s)
        base = derive_seed(s.seed, s.last_epoch)  # consecutive seeds: torch scrambles them
        first, stride = s.rank, s.num_replicas
        return ((i, (base + first + j * stride) % 2**63) for j, i in enumerate(indices))

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


class ShardSampler(Sampler[int]):
    """Evaluation indices for one rank, in order, with no padding: each sample counted once.

    Rank ``r`` of ``num_replicas`` takes ``r, r + num_replicas, r + 2 * num_replicas, ...``;
    shards differ by at most one sample. torch's ``DistributedSampler`` pads shards to equal
    length by repeating samples, which would count those samples twice in validation metrics.
    With one replica it is the plain sequential order.

    Args:
        length: size of the dataset.
        num_replicas: number of processes sharing it.
        rank: this process's index among them.

    Example:
        >>> list(ShardSampler(5, num_replicas=2, rank=1))
        [1, 3]
    """

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, "
                             f"got num_replicas={num_replicas}, rank={rank}.")
        self.length, self.num_replicas, self.rank = length, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
