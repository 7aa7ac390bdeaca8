"""The RAM paper's translated and cluttered MNIST (Mnih et al. 2014, sections 4.1-4.2): tasks
``mnist_translated`` and ``mnist_cluttered``, made from the real MNIST digits of :mod:`attn.data.mnist`.

A canvas, for a 28 x 28 digit x of a split (N = ``data.mnist_canvas_size``, K clutter pieces of
p x p, p = ``data.clutter_size``; K = 0 for ``mnist_translated``, ``data.clutter_pieces`` or the
paper's 4 at N = 60 and 8 at N = 100 for ``mnist_cluttered``):

    canvas        = zeros (N, N) uint8                           (a black canvas)
    (top, left)   ~ U{0 .. N - 28}^2
    canvas[top:top+28, left:left+28] = x                          (the whole digit fits the canvas)
    for k = 1 .. K:
        j_k       ~ U(the split's digits other than x)           (never x itself; test clutter from test digits)
        (cy, cx)  ~ U{0 .. 28 - p}^2,  piece_k = x_{j_k}[cy:cy+p, cx:cx+p]   (a random p x p crop of it)
        (y, x)    ~ U{0 .. N - p}^2
        canvas[y:y+p, x:x+p] = max(canvas[y:y+p, x:x+p], piece_k)

Pieces are combined with the pixel maximum, so they may cover blank parts of the digit's frame or
touch its strokes but never darken them (a digit pixel is <= its canvas pixel everywhere). Crops are
uniform over the source frame, as in the paper, so some pieces are (nearly) blank. The label is x's.

Training canvases are drawn afresh for every batch (on-the-fly generation, as in the paper: each
epoch sees new positions and clutter) from ``generator`` or the global torch RNG, which the trainer
reseeds every epoch, in a few tensor ops on the batch's device (two scatters, one gather; no
per-image loop). Validation and test canvases are fixed: their draws are made once at load, per
split, from a CPU generator seeded by (``data.placement_seed``, split), and looked up by image id,
so every run, batch size, worker count and rank sees the same test set (subsets included:
``data.eval_subset`` keeps the first images with their canvases unchanged).

Stored images stay the 28 x 28 digits, uint8 (N_split, 1, 28, 28): 55 MB for the 70k digits, held
once (the splits are views of one pool that the clutter is cut from); canvases exist per batch only.
Ids: train and validation digits keep their index in the training file, test digits get
``len(training file) + index`` (60000 + i), so an id names one digit of one split. ``Split.boxes``
is the digit's tight ink box in stored (28 x 28) pixels; :meth:`DigitCanvas.place` returns it in
canvas pixels. Inputs are normalised with ``data.mean`` / ``data.std`` (MNIST's 0.1307 / 0.3081 by
default): a canvas is mostly black, so its own mean is lower; the model does not need it centred.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from attn.config import DataConfig
from attn.data.base import DataSpec, Split, TaskData
from attn.data.mnist import load_mnist
from attn.errors import DataError

DIGIT = 28
"""Side of an MNIST digit frame."""
PAPER_PIECES = {60: 4, 100: 8}
"""The paper's clutter piece count per canvas side."""
_SPLITS = ("train", "val", "test")


class Draws(NamedTuple):
    """The random choices behind B canvases (all int64, on one device).

    digit_at: (B, 2) (top, left) of the digit. source: (B, K) pool rows of the clutter digits.
    crop_at: (B, K, 2) (top, left) of each piece in its source frame. piece_at: (B, K, 2) (top, left)
    of each piece on the canvas.
    """

    digit_at: torch.Tensor
    source: torch.Tensor
    crop_at: torch.Tensor
    piece_at: torch.Tensor

    def to(self, device) -> "Draws":
        return Draws(*(t.to(device=device, dtype=torch.long) for t in self))


class DigitPool:
    """The digits of a task by id: ``pool`` uint8 (R, 28, 28) and ``ids`` (R,) -> pool rows, and the
    pool on each device it is read on (copied there once)."""

    def __init__(self, pool: torch.Tensor, ids: torch.Tensor) -> None:
        self.pool = pool
        self._row_of_id = torch.full((int(ids.max()) + 1 if len(ids) else 0,), -1, dtype=torch.long)
        self._row_of_id[ids] = torch.arange(len(ids))
        self._pools: dict[str, torch.Tensor] = {}

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Image ids (B,) -> pool rows (B,) int64 on the CPU; refuses ids of no digit of this task."""
        ids = ids.detach().cpu().long()
        known = (ids >= 0) & (ids < len(self._row_of_id))
        rows = torch.full_like(ids, -1)
        rows[known] = self._row_of_id[ids[known]]
        if bool((rows < 0).any()):
            raise ValueError(f"image id {int(ids[rows < 0][0])} is no digit of this task")
        return rows

    def batch_rows(self, images: torch.Tensor, ids: Optional[torch.Tensor], why: str) -> torch.Tensor:
        """Check a batch of digits uint8 (B, 1, 28, 28) and return their pool rows; ``why``: what the
        canvas needs the ids for (said when they are missing)."""
        if images.shape[1:] != (1, DIGIT, DIGIT):
            raise ValueError(f"expected digits of shape (B, 1, {DIGIT}, {DIGIT}), got {tuple(images.shape)}")
        if ids is None:
            raise ValueError(f"MNIST canvases need the batch's image ids ({why})")
        return self.rows(ids)

    def on(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._pools:
            self._pools[key] = self.pool.to(device)
        return self._pools[key]


class DigitCanvas:
    """Puts 28 x 28 digits on ``size`` x ``size`` black canvases with ``pieces`` clutter pieces of
    ``piece`` x ``piece`` (see the module docstring): random per batch in training, fixed per image id
    in evaluation.

    pool: uint8 (R, 28, 28), every digit of the task, the train, val and test splits one after the
    other (``split_sizes``); ``ids`` (R,): their ids. Clutter of a digit is cut from its own split.
    """

    def __init__(
        self,
        pool: torch.Tensor,
        ids: torch.Tensor,
        split_sizes: tuple[int, int, int],
        *,
        size: int,
        pieces: int = 0,
        piece: int = 8,
        seed: int = 0,
    ) -> None:
        if size < DIGIT:
            raise ValueError(f"a {DIGIT} px digit does not fit a {size} px canvas")
        if not 1 <= piece <= min(DIGIT, size):
            raise ValueError(f"a clutter piece of {piece} px must be 1 to {min(DIGIT, size)} px")
        self.size, self.pieces, self.piece, self.seed = size, pieces, piece, seed
        self.pool = pool
        self.digits = DigitPool(pool, ids)
        sizes = torch.tensor(split_sizes, dtype=torch.long)
        self._starts = torch.cumsum(sizes, 0) - sizes
        self._sizes = sizes
        if pieces:
            for name, n in zip(_SPLITS, split_sizes):
                if n == 1:
                    raise DataError(
                        f"mnist_cluttered: the {name} split holds a single digit, and clutter must come from "
                        "other digits of the same split; give it at least 2 (data.val_fraction)"
                    )
        # Evaluation draws: once, per split, from its own seeded generator; int16/int32 to keep them small.
        tables = []
        for code, (start, n) in enumerate(zip(self._starts.tolist(), split_sizes)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + code)
            tables.append(self.draw(torch.arange(start, start + n), g))
        self._eval = Draws(
            *(torch.cat([t[f] for t in tables]).to(torch.int32 if f == 1 else torch.int16) for f in range(4))
        )

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Image ids (B,) -> pool rows (B,) int64 on the CPU (:meth:`DigitPool.rows`)."""
        return self.digits.rows(ids)

    def draw(self, rows: torch.Tensor, generator: Optional[torch.Generator] = None) -> Draws:
        """Random draws for the digits at pool ``rows`` (B,), on ``rows``' device, from ``generator``
        (on that device) or the global RNG. Clutter sources are other digits of each digit's split."""
        B, K, p, N, dev = rows.shape[0], self.pieces, self.piece, self.size, rows.device
        g = generator
        digit_at = torch.randint(0, N - DIGIT + 1, (B, 2), device=dev, generator=g)
        if K == 0:
            empty = torch.zeros(B, 0, dtype=torch.long, device=dev)
            return Draws(digit_at, empty, empty[..., None].expand(B, 0, 2), empty[..., None].expand(B, 0, 2))
        split = torch.bucketize(rows, torch.cumsum(self._sizes, 0)[:-1].to(dev), right=True)
        start, n = self._starts.to(dev)[split], self._sizes.to(dev)[split]
        # An offset in 1 .. n-1 from the digit's own position never lands on the digit itself; the
        # modulo of a 62-bit draw is uniform to within n / 2^62.
        step = torch.randint(0, 1 << 62, (B, K), device=dev, generator=g) % (n - 1)[:, None] + 1
        source = start[:, None] + ((rows - start)[:, None] + step) % n[:, None]
        crop_at = torch.randint(0, DIGIT - p + 1, (B, K, 2), device=dev, generator=g)
        piece_at = torch.randint(0, N - p + 1, (B, K, 2), device=dev, generator=g)
        return Draws(digit_at, source, crop_at, piece_at)

    def render(self, digits: torch.Tensor, d: Draws) -> torch.Tensor:
        """digits uint8 (B, 1, 28, 28) and their draws (on the digits' device) -> canvases uint8
        (B, 1, N, N)."""
        B, N, p, dev = digits.shape[0], self.size, self.piece, digits.device
        canvas = torch.zeros(B, N * N, dtype=torch.uint8, device=dev)
        r = torch.arange(DIGIT, device=dev)
        flat = (d.digit_at[:, 0, None] + r)[:, :, None] * N + (d.digit_at[:, 1, None] + r)[:, None, :]
        canvas.scatter_(1, flat.reshape(B, -1), digits.reshape(B, -1))
        if d.source.shape[1]:
            q = torch.arange(p, device=dev)
            ys = (d.crop_at[..., 0, None] + q)[..., :, None]  # (B, K, p, 1)
            xs = (d.crop_at[..., 1, None] + q)[..., None, :]  # (B, K, 1, p)
            pieces = self.digits.on(dev)[d.source[..., None, None], ys, xs]  # (B, K, p, p)
            flat = (d.piece_at[..., 0, None] + q)[..., :, None] * N + (d.piece_at[..., 1, None] + q)[..., None, :]
            # amax: overlapping pieces combine the same whatever the order (deterministic on GPUs too).
            canvas.scatter_reduce_(1, flat.reshape(B, -1), pieces.reshape(B, -1), reduce="amax")
        return canvas.view(B, 1, N, N)

    def place(
        self,
        images: torch.Tensor,
        *,
        train: bool,
        ids: Optional[torch.Tensor] = None,
        boxes: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """digits uint8 (B, 1, 28, 28) with their ids (B,) -> (canvases uint8 (B, 1, N, N), boxes (B, 4)
        float32 (x0, y0, x1, y1) in canvas pixels: ``boxes`` (stored 28 x 28 pixels) moved with the
        digit, or the digit's whole 28 x 28 frame when None).

        Training draws from ``generator`` or the global RNG; evaluation uses the draws fixed at load.
        ``ids`` are needed in both: they name the digit's split (its clutter sources) and itself
        (never its own clutter)."""
        dev = images.device
        rows = self.digits.batch_rows(images, ids, "they name each digit's split")
        if train:
            gdev = generator.device if generator is not None else dev
            d = self.draw(rows.to(gdev), generator).to(dev)
        else:
            d = Draws(*(t[rows] for t in self._eval)).to(dev)
        out = self.render(images, d)
        if boxes is None:
            boxes = torch.tensor([0.0, 0.0, DIGIT, DIGIT]).expand(len(rows), 4)
        shift = d.digit_at.flip(1).repeat(1, 2).float()  # (left, top, left, top)
        return out, boxes.to(dev, torch.float32) + shift


def ink_boxes(digits: torch.Tensor) -> torch.Tensor:
    """uint8 (R, 28, 28) -> float32 (R, 4) tight boxes (x0, y0, x1, y1) of the non-zero pixels, in
    frame pixels (x1, y1 exclusive); a blank frame gets the whole frame."""
    ink = digits > 0
    rows, cols = ink.any(dim=2), ink.any(dim=1)  # (R, 28) each

    def span(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = m.int().argmax(dim=1)
        last = DIGIT - m.flip(1).int().argmax(dim=1)
        blank = ~m.any(dim=1)
        return first.masked_fill(blank, 0), last.masked_fill(blank, DIGIT)

    (y0, y1), (x0, x1) = span(rows), span(cols)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


class DigitSplits(NamedTuple):
    """A task's train, val and test digits one after the other: ``pool`` uint8 (R, 1, 28, 28), their
    ``ids`` (R,) and ``labels`` (R,), and the three ``sizes``. Test ids follow the training file's
    (60000 + i), so an id names one digit, and its split, for a canvas."""

    pool: torch.Tensor
    ids: torch.Tensor
    labels: torch.Tensor
    sizes: tuple[int, int, int]

    def splits(self, labels: torch.Tensor, boxes: Optional[torch.Tensor] = None) -> list[Split]:
        """The three splits as views of the pool, with ``labels`` (R, ...) and ``boxes`` (R, 4) per row."""
        out, at = [], 0
        for n in self.sizes:
            rows = slice(at, at + n)
            out.append(Split(self.pool[rows], labels[rows], self.ids[rows], None if boxes is None else boxes[rows]))
            at += n
        return out


def digit_splits(cfg: DataConfig) -> DigitSplits:
    """The MNIST copy of ``data.data_dir`` (None: the embedded one), split as
    :func:`attn.data.mnist.load_mnist` splits it, as one pool."""
    src = load_mnist(cfg.data_dir, val_fraction=cfg.val_fraction, split_seed=cfg.split_seed, mean=cfg.mean, std=cfg.std)
    splits = (src.train, src.val, src.test)
    sizes = tuple(len(s) for s in splits)
    ids = torch.cat([src.train.ids, src.val.ids, src.test.ids + (sizes[0] + sizes[1])])
    return DigitSplits(torch.cat([s.images for s in splits]), ids, torch.cat([s.labels for s in splits]), sizes)


def load_mnist_variant(cfg: DataConfig) -> TaskData:
    """``mnist_translated`` / ``mnist_cluttered`` from :func:`digit_splits`."""
    N = cfg.mnist_canvas_size
    clutter = {}
    if cfg.task == "mnist_cluttered":
        pieces = cfg.clutter_pieces if cfg.clutter_pieces is not None else PAPER_PIECES[N]
        clutter = {"pieces": pieces, "piece": cfg.clutter_size}
    digits = digit_splits(cfg)
    canvas = DigitCanvas(digits.pool[:, 0], digits.ids, digits.sizes, size=N, seed=cfg.placement_seed, **clutter)
    out = digits.splits(digits.labels, ink_boxes(digits.pool[:, 0]))
    spec = DataSpec(
        channels=1, height=N, width=N, num_classes=10, class_names=tuple(str(i) for i in range(10))
    )
    K, p = clutter.get("pieces", 0), clutter.get("piece")
    shown = f", {K} clutter pieces of {p}x{p} from other digits" if K else ""
    notes = [
        f"{cfg.task}: 28x28 digits at a random spot of a {N}x{N} black canvas{shown}; training canvases "
        f"drawn per batch, validation/test canvases fixed by placement_seed {cfg.placement_seed}"
    ]
    return TaskData(
        spec=spec, train=out[0], val=out[1], test=out[2], mean=cfg.mean, std=cfg.std, canvas=canvas, notes=notes
    )
