"""The Goodfellow et al. (2013) crop of one house number: the union box of its digits grown by 30%.

:func:`crop_box` turns a record's digit rows (k, 5) into the crop (x0, y0, x1, y1) in source pixels,
or None for an unusable record; :func:`fallback_box` is the crop of such a record, so that a test
image is never dropped; :func:`crop_image` cuts and resizes a crop to uint8 (C, S, S).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
from PIL import Image

EXPAND = 0.15
"""Share of the union box's width (height) added on the left and on the right (top and bottom)."""

def crop_box(
    boxes: np.ndarray, width: int, height: int, expand: float = EXPAND
) -> Optional[tuple[float, float, float, float]]:
    """The crop of one number: digit rows (k, 5) = (height, label, left, top, width) on a ``width`` x
    ``height`` image -> (x0, y0, x1, y1) in pixels (floats, x1/y1 exclusive).

    Union box of the digits, grown by ``expand`` of its width (height) on each side, clipped to the
    image. None when the record is unusable: no digits, a negative field, an empty box, a label outside
    1-10, or a crop with less than one pixel inside the image.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    if len(b) == 0 or (b[:, [0, 2, 3, 4]] < 0).any() or (b[:, 0] <= 0).any() or (b[:, 4] <= 0).any():
        return None
    labels = b[:, 1]
    if (labels != np.round(labels)).any() or (labels < 1).any() or (labels > 10).any():
        return None
    x0, y0 = b[:, 2].min(), b[:, 3].min()
    x1, y1 = (b[:, 2] + b[:, 4]).max(), (b[:, 3] + b[:, 0]).max()
    dx, dy = expand * (x1 - x0), expand * (y1 - y0)
    x0, x1 = max(0.0, x0 - dx), min(float(width), x1 + dx)
    y0, y1 = max(0.0, y0 - dy), min(float(height), y1 + dy)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    return (float(x0), float(y0), float(x1), float(y1))


FROM_VALID_DIGITS, WHOLE_IMAGE = 1, 2
"""Cache status of a record whose box is unusable (0: a usable box): cropped from the digits whose
boxes are valid, or the whole image when none is."""


def fallback_box(boxes: np.ndarray, width: int, height: int) -> tuple[tuple[float, float, float, float], int]:
    """The crop of a record :func:`crop_box` refuses, and its status: the usual crop of the digits
    whose own boxes are valid (no negative field, positive height and width, some part inside the
    image), whatever their labels; when none is, the whole image."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    valid = (b[:, [0, 2, 3, 4]] >= 0).all(axis=1) & (b[:, 0] > 0) & (b[:, 4] > 0)
    valid &= (b[:, 2] < width) & (b[:, 3] < height)
    if valid.any():
        rows = b[valid].copy()
        rows[:, 1] = 1  # labels do not move a crop
        box = crop_box(rows, width, height)
        if box is not None:
            return box, FROM_VALID_DIGITS
    return (0.0, 0.0, float(width), float(height)), WHOLE_IMAGE


def crop_image(image: Image.Image, box: tuple[float, float, float, float], size: int, color: str) -> np.ndarray:
    """Crop ``box`` of a PIL image and resize it to size x size -> uint8 (C, size, size), C = 1 (gray,
    PIL 'L') or 3 (rgb). The box may be fractional: PIL resamples exactly that region. The image is
    cut to the box (rounded outwards) first, so that the shrinking filter, whose support is wider than
    a pixel, reads no pixels beyond the crop."""
    x0, y0, x1, y1 = box
    ix0, iy0 = math.floor(x0), math.floor(y0)
    patch = image.convert("L" if color == "gray" else "RGB").crop((ix0, iy0, math.ceil(x1), math.ceil(y1)))
    out = np.asarray(patch.resize((size, size), Image.BILINEAR, box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)))
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
