"""The Goodfellow et al. (2013) crop of one house number: the union box of its digits grown by 30%.

:func:`crop_box` turns a record's digit rows (k, 5) into the crop (x0, y0, x1, y1) in source pixels,
or None for an unusable record; :func:`crop_image` cuts and resizes it to uint8 (C, S, S).
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
