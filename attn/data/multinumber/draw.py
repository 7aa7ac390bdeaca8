"""One multinumber sample: two pool records cropped, placed apart on a canvas, the rest inpainted.

Sample ``id`` uses only ``np.random.default_rng([seed, id])``, so every worker count gives
byte-identical images. Placement, reading order and the inpainting shortcut (Telea on the canvas
shrunk ``INPAINT_SCALE`` times, ~200x faster than the reference's radius 32 at full size, same
look): docs/data.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from attn.data.multinumber.format import FOLDER_NAMES
from attn.data.multinumber.pools import Pool
from attn.data.svhn import crop_box, crop_image
from attn.errors import DataError

PAD = 5
"""Gap in pixels the second box keeps from the first during the first PLACE_TRIES[0] tries."""
PLACE_TRIES = (10, 30)
"""Tries with the PAD gap, then tries that only forbid overlap; then the pair is drawn again."""
INPAINT_RADIUS = 32
"""Telea radius in canvas pixels (the reference's)."""
INPAINT_SCALE = 4
"""Telea runs on the canvas shrunk by this factor at radius INPAINT_RADIUS / INPAINT_SCALE (docs/data.md:
~200x faster than radius 32 at full size, same look); 1 = the reference exactly."""
MAX_PAIR_DRAWS = 10_000
"""Pair redraws before giving up on a sample. A draw places its pair with probability ~1 at 224/64
and still > 0.002 at the smallest valid size (2 * box + PAD) for box <= 1000, so all 10,000 fail
only when the drawn tight boxes keep lying outside their photos (broken source data)."""


@dataclass
class Job:
    """Everything a worker needs (sent once per worker process)."""

    root: str
    out: str
    size: int
    box: int
    seed: int
    radius: int
    scale: int
    bounds: tuple[int, int, int]  # (n_train, n_train + n_val, count)
    test_pool: str
    pools: dict[str, Pool]  # "train": train (+ extra); "test": SVHN test (only with test_pool="test")

    def split_of(self, sid: int) -> str:
        return "train" if sid < self.bounds[0] else "val" if sid < self.bounds[1] else "test"

    def pool_key(self, split: str) -> str:
        return "test" if split == "test" and self.test_pool == "test" else "train"


def _place(rng: np.random.Generator, first: np.ndarray, size: int, box: int) -> Optional[np.ndarray]:
    """Top-left (x, y) of the second box: PLACE_TRIES[0] uniform draws that keep a PAD gap to the
    box at ``first``, then PLACE_TRIES[1] that only must not overlap it; None if all fail."""
    for tries, pad in zip(PLACE_TRIES, (PAD, 0)):
        for _ in range(tries):
            p = rng.integers(0, size - box + 1, size=2)
            # Two equal squares are apart (by >= pad) iff they are apart along x or along y.
            if abs(int(p[0]) - int(first[0])) >= box + pad or abs(int(p[1]) - int(first[1])) >= box + pad:
                return p
    return None


def _source_crop(job: Job, pool: Pool, row: int, render: bool):
    """(clipped tight box, uint8 (box, box) gray crop or None when not ``render``) of pool row
    ``row``; None when the tight box has less than 1 px inside the photo."""
    path = Path(job.root) / FOLDER_NAMES[pool.folder[row]] / pool.files[row]
    x0, y0, x1, y1 = pool.box[row]
    try:
        with Image.open(path) as im:
            # A single-digit row holding the union box: crop_box's clipping rule, exactly.
            clipped = crop_box(np.array([[y1 - y0, 1, x0, y0, x1 - x0]]), im.width, im.height, expand=0.0)
            if clipped is None:
                return None
            return clipped, (crop_image(im, clipped, job.box, "gray")[0] if render else None)
    except FileNotFoundError:
        raise DataError(f"{path}: PNG named in digitStruct.mat is missing; extract the folder again") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the PNG ({exc}); the file is damaged: extract the folder again") from None


def draw(job: Job, sid: int, render: bool):
    """Sample ``sid`` -> (pool rows (first, second), top-lefts int64 (2, 2) as (x, y) of first and
    second, uint8 (size, size) canvas or None when not ``render``)."""
    rng = np.random.default_rng([job.seed, sid])
    pool = job.pools[job.pool_key(job.split_of(sid))]
    n, S, B = len(pool), job.size, job.box
    for _ in range(MAX_PAIR_DRAWS):
        a = int(rng.integers(n))
        b = int(rng.integers(n - 1))
        b += b >= a  # distinct records, uniform over pairs
        pa = rng.integers(0, S - B + 1, size=2)
        pb = _place(rng, pa, S, B)
        if pb is None:
            continue
        ca = _source_crop(job, pool, a, render)
        cb = _source_crop(job, pool, b, render) if ca is not None else None
        if ca is None or cb is None:
            continue
        # Reading order: side by side (vertical offset < box) -> left first, else upper first.
        if abs(int(pa[1]) - int(pb[1])) < B:
            swap = pb[0] < pa[0]
        else:
            swap = pb[1] < pa[1]
        rows, pos, crops = [a, b], [pa, pb], [ca[1], cb[1]]
        if swap:
            rows, pos, crops = rows[::-1], pos[::-1], crops[::-1]
        pos = np.array(pos, dtype=np.int64)
        if not render:
            return rows, pos, None
        canvas = np.zeros((S, S), dtype=np.uint8)
        mask = np.full((S, S), 255, dtype=np.uint8)  # 255 = to inpaint
        for (x, y), crop in zip(pos.tolist(), crops):
            canvas[y : y + B, x : x + B] = crop
            mask[y : y + B, x : x + B] = 0
        return rows, pos, inpaint(canvas, mask, job.radius, job.scale)
    raise DataError(
        f"sample {sid}: no valid pair after {MAX_PAIR_DRAWS} draws; the SVHN boxes in {job.root} lie "
        "outside their photos too often to draw from"
    )


def inpaint(canvas: np.ndarray, mask: np.ndarray, radius: int, scale: int) -> np.ndarray:
    """Fill the pixels where ``mask`` (uint8 (S, S)) is non-zero from the rest of ``canvas`` (uint8
    (S, S)) by Telea's method; the other pixels are returned unchanged.

    scale 1: ``cv2.inpaint`` at ``radius``. scale s > 1: Telea at radius max(1, round(radius / s))
    on the canvas shrunk to round(S / s) (area averaging; a shrunk pixel counts as known only when
    every pixel it covers is), enlarged back bilinearly; this approximates radius ``radius`` at
    full size for ~1/s^4 of the cost (s^2 fewer pixels, each with s^2 fewer neighbours).
    """
    if scale == 1:
        return cv2.inpaint(canvas, mask, radius, cv2.INPAINT_TELEA)
    S = canvas.shape[0]
    s = max(1, round(S / scale))
    small = cv2.resize(canvas, (s, s), interpolation=cv2.INTER_AREA)
    known = cv2.resize((mask == 0).astype(np.float32), (s, s), interpolation=cv2.INTER_AREA)
    small_mask = np.where(known >= 1 - 1e-4, 0, 255).astype(np.uint8)
    fill = cv2.inpaint(small, small_mask, max(1, round(radius / scale)), cv2.INPAINT_TELEA)
    fill = cv2.resize(fill, (S, S), interpolation=cv2.INTER_LINEAR)
    return np.where(mask != 0, fill, canvas)

