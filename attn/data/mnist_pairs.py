"""The DRAM paper's two MNIST tasks (Ba et al. 2015, section 4.1): tasks ``mnist_pairs`` and
``mnist_addition``, made from the real MNIST digits of :mod:`attn.data.mnist`.

Each digit a of a split is paired, once at load, with another digit b of the same split
(``data.placement_seed``); a canvas of side N (``data.mnist_canvas_size``, 100 in the paper) holds
both, without overlap:

    canvas        = zeros (N, N) uint8
    p_a           ~ U{0 .. N - 28}^2                              (top, left) of a
    p_b           ~ U{0 .. N - 28}^2, redrawn while the two 28 x 28 frames overlap (16 tries; then
                    beside a on the x axis, where N >= 84 always leaves room)
    canvas[p_a] = a, canvas[p_b] = b

Labels: ``mnist_pairs`` stores the two digits as a sequence, then the end token (tokens: 0 = end,
1 + d = digit d), in the order of ``data.pair_order``:

    left_to_right  (a, b, end), and a is placed at whichever of the two drawn positions comes first
                   in reading order (the smaller left edge, then the smaller top): the label follows
                   the positions although training draws them anew every batch. The pairing is a
                   random matching within a split, so (a, b) is exchangeable and the canvases are
                   distributed exactly as with a at a random one of the two positions.
    ascending      (min(a, b), max(a, b), end), a at the first drawn position: the episode must have
                   seen both digits before it reads the first.

``mnist_addition`` has one label, a + b (19 classes), a at the first drawn position. Scoring never
counts the order (``DataSpec.unordered_slots``): a predicted pair is right when it holds both digits
in either order, the multiset the paper scores (55 unordered pairs).

Training canvases are new every batch (positions drawn per batch, in a few tensor ops on the batch's
device); the pairing is fixed, so an epoch shows every digit once as a and about once as b.
Validation and test canvases are fixed by (``data.placement_seed``, split) and looked up by image id,
as for :mod:`attn.data.mnist_variants` (whose ids, pool and subset rules these tasks share).
"""

from __future__ import annotations

from typing import Optional

import torch

from attn.config import DataConfig
from attn.data.base import DataSpec, TaskData
from attn.data.mnist_variants import DIGIT, DigitPool, digit_splits
from attn.errors import DataError

TRIES = 16
"""Candidate positions of the second digit per canvas before the fallback beside the first."""
END, DIGIT_TOKEN = 0, 1
"""mnist_pairs tokens: the end token, and digit d's token DIGIT_TOKEN + d."""
_SPLITS = ("train", "val", "test")


def pair_positions(first: torch.Tensor, size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, 2) (top, left) of each first digit -> (B, 2) of a second digit whose 28 x 28 frame does not
    overlap the first's on a ``size`` canvas: uniform among the positions that do not (rejection over
    ``TRIES`` candidates); when all overlap, beside the first on the x axis at a uniform height."""
    B, dev = first.shape[0], first.device
    cand = torch.randint(0, size - DIGIT + 1, (B, TRIES, 2), device=dev, generator=generator)
    apart = ((cand - first[:, None, :]).abs() >= DIGIT).any(-1)  # (B, TRIES): frames disjoint
    pick = apart.to(torch.int8).argmax(1)  # the first disjoint candidate (0 when there is none)
    second = cand[torch.arange(B, device=dev), pick]
    left = first[:, 1]
    beside = torch.where(left >= DIGIT, left - DIGIT, left + DIGIT)
    fallback = torch.stack([second[:, 0], beside], dim=1)
    return torch.where(apart.any(1)[:, None], second, fallback)


class PairCanvas:
    """Puts each digit and its partner on a ``size`` x ``size`` black canvas (module docstring):
    positions random per batch in training, fixed per image id in evaluation.

    pool: uint8 (R, 28, 28), the train, val and test digits one after the other (``split_sizes``);
    ids (R,): their ids; partner (R,): the pool row each digit is paired with."""

    def __init__(self, pool: torch.Tensor, ids: torch.Tensor, split_sizes: tuple[int, int, int], partner: torch.Tensor,
                 *, size: int, seed: int = 0, digit_first: bool = False) -> None:
        if size < 3 * DIGIT:
            raise ValueError(f"two {DIGIT} px digits need a canvas of at least {3 * DIGIT} px, not {size}")
        self.pool, self.partner, self.size = pool, partner, size
        self.digit_first = digit_first  # the digit (not its partner) at the position read first
        self.digits = DigitPool(pool, ids)
        tables = []
        for code, n in enumerate(split_sizes):
            g = torch.Generator().manual_seed(seed * 1_000_003 + 17 + code)
            tables.append(self.draw(n, torch.device("cpu"), g))
        self._eval = torch.cat(tables).to(torch.int16)  # (R, 2, 2)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Image ids (B,) -> pool rows (B,) int64 on the CPU (:meth:`DigitPool.rows`)."""
        return self.digits.rows(ids)

    def draw(self, batch: int, device: torch.device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Positions of ``batch`` pairs: (B, 2, 2) int64, [:, 0] the digit's (top, left), [:, 1] its partner's;
        with ``digit_first`` the digit's is the one read first (:func:`reading_order`)."""
        first = torch.randint(0, self.size - DIGIT + 1, (batch, 2), device=device, generator=generator)
        at = torch.stack([first, pair_positions(first, self.size, generator)], dim=1)
        return reading_order(at, self.size) if self.digit_first else at

    def render(self, digits: torch.Tensor, partners: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """digits and partners uint8 (B, 28, 28), positions ``at`` (B, 2, 2) -> canvases uint8 (B, 1, N, N)."""
        B, N, dev = digits.shape[0], self.size, digits.device
        canvas = torch.zeros(B, N * N, dtype=torch.uint8, device=dev)
        r = torch.arange(DIGIT, device=dev)
        for k, image in enumerate((digits, partners)):
            flat = (at[:, k, 0, None] + r)[:, :, None] * N + (at[:, k, 1, None] + r)[:, None, :]
            canvas.scatter_reduce_(1, flat.reshape(B, -1), image.reshape(B, -1), reduce="amax")
        return canvas.view(B, 1, N, N)

    def place(self, images: torch.Tensor, *, train: bool, ids: Optional[torch.Tensor] = None,
              generator: Optional[torch.Generator] = None, **_) -> tuple[torch.Tensor, torch.Tensor]:
        """digits uint8 (B, 1, 28, 28) with their ids (B,) -> (canvases uint8 (B, 1, N, N), the two digits'
        frames (B, 2, 4) float32 (x0, y0, x1, y1) in canvas pixels). Training draws positions from
        ``generator`` or the global RNG; evaluation uses the positions fixed at load."""
        dev = images.device
        rows = self.digits.batch_rows(images, ids, "they name each digit's partner")
        if train:
            gdev = generator.device if generator is not None else dev
            at = self.draw(len(rows), gdev, generator).to(dev)
        else:
            at = self._eval[rows].to(dev, torch.long)
        partners = self.digits.on(dev)[self.partner[rows].to(dev)]
        out = self.render(images[:, 0], partners, at)
        frames = torch.cat([at.flip(-1), at.flip(-1) + DIGIT], dim=-1).float()
        return out, frames


def reading_order(at: torch.Tensor, size: int) -> torch.Tensor:
    """Positions (B, 2, 2) of two frames as (top, left) -> the same with, in each row, the frame read
    first (the smaller left edge; on a tie the smaller top) at index 0."""
    key = at[..., 1] * size + at[..., 0]  # (B, 2)
    swap = key[:, 1] < key[:, 0]
    return torch.where(swap[:, None, None], at.flip(1), at)


def partners(split_sizes: tuple[int, ...], seed: int) -> torch.Tensor:
    """For a pool of splits one after the other: each row's partner, another row of its own split
    (a seeded offset 1 .. n-1 from it, so never itself)."""
    out, start = [], 0
    for code, n in enumerate(split_sizes):
        if n == 1:
            raise DataError(f"mnist_pairs/mnist_addition: the {_SPLITS[code]} split holds a single digit, which "
                            "has no other digit to be paired with; give it at least 2 (data.val_fraction)")
        g = torch.Generator().manual_seed(seed * 1_000_003 + 101 + code)
        step = torch.randint(1, max(n, 2), (n,), generator=g)
        out.append(start + (torch.arange(n) + step) % max(n, 1))
        start += n
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def pair_labels(task: str, a: torch.Tensor, b: torch.Tensor, order: str = "left_to_right") -> torch.Tensor:
    """Digit labels a, b (N,) -> mnist_pairs: (N, 3) tokens (a, b, end), or with ``order`` ascending
    (smaller, larger, end); mnist_addition: (N,) a + b."""
    if task == "mnist_addition":
        return a + b
    if order == "ascending":
        a, b = torch.minimum(a, b), torch.maximum(a, b)
    return torch.stack([a + DIGIT_TOKEN, b + DIGIT_TOKEN, torch.full_like(a, END)], dim=1)


def load_mnist_pairs(cfg: DataConfig) -> TaskData:
    """``mnist_pairs`` / ``mnist_addition`` from :func:`attn.data.mnist_variants.digit_splits`."""
    N = cfg.mnist_canvas_size
    digits = digit_splits(cfg)
    partner = partners(digits.sizes, cfg.placement_seed)
    order = getattr(cfg, "pair_order", None)
    canvas = PairCanvas(digits.pool[:, 0], digits.ids, digits.sizes, partner, size=N, seed=cfg.placement_seed,
                        digit_first=order == "left_to_right")
    out = digits.splits(pair_labels(cfg.task, digits.labels, digits.labels[partner], order))
    if cfg.task == "mnist_addition":
        spec = DataSpec(1, N, N, 19, tuple(str(i) for i in range(19)))
        what = "labelled with their sum (19 classes)"
    else:
        spec = DataSpec(1, N, N, 11, ("<end>",) + tuple(str(i) for i in range(10)), max_tokens=3, end_token=END,
                        unordered_slots=2)
        read = "left to right" if order == "left_to_right" else "the smaller first"
        what = f"read as two digits, {read} (scored in either order)"
    notes = [f"{cfg.task}: two 28x28 digits of a split, without overlap, on a {N}x{N} black canvas, {what}; "
             f"training positions drawn per batch, validation/test canvases and the pairing fixed by "
             f"placement_seed {cfg.placement_seed}"]
    return TaskData(spec=spec, train=out[0], val=out[1], test=out[2], mean=cfg.mean, std=cfg.std, canvas=canvas,
                    notes=notes)
