"""Shared dataset containers and the in-memory batch loader used by every task.

Images are kept as uint8 tensors (N, C, H, W) and normalised per batch, which keeps memory at a
quarter of float32 and costs one fused op per batch. Batches are tensor slices: no per-item
collation, no loader processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its input: C x H x W images and the number of classes."""

    channels: int
    height: int
    width: int
    num_classes: int
    class_names: tuple[str, ...]


@dataclass
class Split:
    """One split: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,), ``ids`` int64 (N,) source ids."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n], self.ids[:n])


@dataclass
class TaskData:
    spec: DataSpec
    train: Split
    val: Split
    test: Split
    mean: float
    std: float

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float32 normalised with the dataset's mean and std."""
        return (images_uint8.float() * (1.0 / 255.0) - self.mean) * (1.0 / self.std)


class BatchLoader:
    """Iterates (images, labels, ids) batches of one split for one rank of ``world`` ranks.

    Training (``shuffle=True``): a permutation seeded by (seed, epoch), padded by wrapping so every
    rank gets the same number of batches (DDP needs equal step counts), rank r taking positions
    r, r + world, ... -- the same contract as ``torch.utils.data.DistributedSampler``.
    Evaluation (``shuffle=False``): rank r takes a contiguous shard without duplicates, so summed
    metrics over ranks count every image exactly once.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
            per_rank = -(-n // self.world)
            total = per_rank * self.world
            if total > n:
                order = torch.cat([order, order[: total - n]])
            return order[self.rank :: self.world]
        bounds = [n * r // self.world for r in range(self.world + 1)]
        return torch.arange(bounds[self.rank], bounds[self.rank + 1])

    def __len__(self) -> int:
        m = len(self._indices())
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        stop = len(idx) - (len(idx) % self.batch_size if self.drop_last else 0)
        for start in range(0, stop, self.batch_size):
            b = idx[start : start + self.batch_size]
            yield self.split.images[b], self.split.labels[b], self.split.ids[b]
