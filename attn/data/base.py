"""Shared dataset containers and the in-memory batch loader used by every task.

Images are kept as uint8 tensors (N, C, H, W) and normalised per batch, which keeps memory at a
quarter of float32 and costs one fused op per batch. Batches are tensor slices: no per-item
collation, no loader processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

IGNORE_INDEX = -100
"""Fills label slots after a sequence's end token; seen only by the cross-entropy (masks elsewhere)."""


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its input.

    channels, height, width: the C x H x W images the model receives (after any crop).
    num_classes: token classes. class_names: how each class prints.
    max_tokens: label slots L per image: 1 for classification (labels (N,)), > 1 for sequence tasks
        (labels (N, L): tokens then ``end_token``, then IGNORE_INDEX).
    end_token: the class that ends a sequence; None for classification.
    unordered_slots: how many leading label slots are scored as a set (their order does not count:
        mnist_pairs' two digits); 0: every slot in order.
    """

    channels: int
    height: int
    width: int
    num_classes: int
    class_names: tuple[str, ...]
    max_tokens: int = 1
    end_token: Optional[int] = None
    unordered_slots: int = 0

    @property
    def is_sequence(self) -> bool:
        return self.end_token is not None


@dataclass
class Split:
    """One split: ``images`` uint8 (N, C, H, W); ``labels`` int64 (N,) or (N, L) token sequences padded
    with IGNORE_INDEX; ``ids`` int64 (N,) source ids (the index of the image in its source);
    ``boxes`` float32 (N, 4) where known: the tight box (x0, y0, x1, y1) of the image's number(s) in
    stored-image pixels. ``missing``: images of the split left out because no prediction could be
    right (an SVHN test number longer than the label slots), counted as errors by evaluation; a
    subset (:meth:`head`) holds none."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    boxes: Optional[torch.Tensor] = None
    missing: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def images_on(self, device: torch.device) -> "Split":
        """The split with its images on ``device`` (labels, ids and boxes stay on the host, where the
        loop reads them without waiting for the device)."""
        return Split(self.images.to(device), self.labels, self.ids, self.boxes, self.missing)

    def head(self, n: int | None) -> "Split":
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n], self.ids[:n], None if self.boxes is None else self.boxes[:n])


@dataclass
class TaskData:
    """The three splits of a task and how a batch of stored images becomes model input.

    per_image: normalise each image by its own mean and std instead of ``mean`` and ``std``.
    crop: None feeds the stored images whole; an int c takes c x c crops of them (uniformly random
        per image in training, the centre in evaluation: Goodfellow et al.'s 64 -> 54 protocol).
    canvas: an :class:`attn.data.background.Canvas` puts each stored image on an extended background
        (random spot in training, fixed per image id in evaluation); None: no canvas.
    notes: lines worth reporting about the data (e.g. how many over-long numbers were skipped).
    """

    spec: DataSpec
    train: Split
    val: Split
    test: Split
    mean: float
    std: float
    crop: Optional[int] = None
    canvas: Optional[Any] = None
    notes: list[str] = field(default_factory=list)
    per_image: bool = False

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] -> float32: (x - mean) / std with the dataset's values, or with ``per_image``
        each image's own mean and std (over its channels and pixels; a flat image becomes 0)."""
        x = images_uint8.float() * (1.0 / 255.0)
        if self.per_image:
            mu = x.mean(dim=(1, 2, 3), keepdim=True)
            sd = x.std(dim=(1, 2, 3), keepdim=True)
            return (x - mu) / sd.clamp_min(1e-3)
        return (x - self.mean) * (1.0 / self.std)

    def model_input(
        self,
        images_uint8: torch.Tensor,
        *,
        train: bool,
        ids: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ):
        """Stored uint8 batch (B, C, H, W) -> normalised float model input (B, C, h, w). ``ids`` (B,):
        the images' ids, which seed evaluation canvases."""
        return self.normalize(self.view(images_uint8, train=train, ids=ids, generator=generator))

    def view(
        self,
        images_uint8: torch.Tensor,
        *,
        train: bool = False,
        ids: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """What the model sees, before normalisation: uint8 (B, C, h, w) after the canvas and crop."""
        if self.canvas is not None:
            images_uint8 = self.canvas.place(images_uint8, train=train, ids=ids, generator=generator)[0]
        if self.crop is not None:
            images_uint8 = random_crop(images_uint8, self.crop, generator) if train else center_crop(images_uint8, self.crop)
        return images_uint8


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size) from the middle: top = (H - size) // 2, left likewise."""
    H, W = images.shape[-2:]
    top, left = (H - size) // 2, (W - size) // 2
    return images[..., top : top + size, left : left + size]


def random_crop(images: torch.Tensor, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), each image cropped at its own uniform offset, in one gather."""
    B, C, H, W = images.shape
    dev = images.device
    top = torch.randint(0, H - size + 1, (B,), device=dev, generator=generator)
    left = torch.randint(0, W - size + 1, (B,), device=dev, generator=generator)
    r = torch.arange(size, device=dev)
    rows = (top[:, None] + r)[:, :, None]  # (B, size, 1)
    cols = (left[:, None] + r)[:, None, :]  # (B, 1, size)
    # Advanced indices around a slice put their broadcast dims first: (B, size, size, C).
    out = images[torch.arange(B, device=dev)[:, None, None], :, rows, cols]
    return out.permute(0, 3, 1, 2).contiguous()


class BatchLoader:
    """Iterates (images, labels, ids) batches of one split for one rank of ``world`` ranks: images
    where the split keeps them (the host, or the training GPU), labels and ids on the host.

    Training (``shuffle=True``): a permutation seeded by (seed, epoch), padded by wrapping so every
    rank gets the same number of batches (DDP needs equal step counts), rank r taking positions
    r, r + world, ... -- the same contract as ``torch.utils.data.DistributedSampler``. ``fill_last``
    (training only) pads further, so that every batch is full: the last one takes the epoch's first
    images again (a compiled step then sees one batch shape).
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
        fill_last: bool = False,
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world
        self.fill_last = fill_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
            per_rank = -(-n // self.world)
            if self.fill_last:
                per_rank = -(-per_rank // self.batch_size) * self.batch_size
            total = per_rank * self.world
            if total > n:
                order = order.repeat(-(-total // n))[:total]
            return order[self.rank :: self.world]
        bounds = [n * r // self.world for r in range(self.world + 1)]
        return torch.arange(bounds[self.rank], bounds[self.rank + 1])

    def __len__(self) -> int:
        return -(-len(self._indices()) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        idx = self._indices()
        images = self.split.images
        on_host = images.device.type == "cpu"
        # images kept on a GPU are gathered there (an index copy, not an image copy, per batch)
        idx_images = idx if on_host else idx.to(images.device)
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            yield images[idx_images[start : start + self.batch_size]], self.split.labels[b], self.split.ids[b]
