"""Decoding your own images: any PIL format, gray or colour, brought to one canvas.

Each image is converted to ``data.color`` (L: 1 channel, RGB: 3; an image of the other kind is an
error unless ``data.convert``) and brought to ``target_size`` (H, W) by ``data.resize``: fit (scaled
to fit, aspect ratio kept, centred on a ``pad_fill`` canvas), stretch, or pad (own scale, centred;
shrunk only when larger). Result: uint8 (N, C, H, W).
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from attn.data.own_images.listing import ImageFile
from attn.errors import DataError

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def channel_kind(mode: str) -> str:
    """PIL mode -> "gray" (one channel, with or without alpha) or "rgb" (colour, palette, CMYK, ...)."""
    return "gray" if mode in _GRAY_MODES else "rgb"



def _unreadable(path: Path, exc: BaseException) -> DataError:
    why = "unknown or corrupt image format" if isinstance(exc, UnidentifiedImageError) else str(exc) or type(exc).__name__
    return DataError(f"{path}: cannot read the image ({why}); replace or remove the file")


def probe(path: Path) -> tuple[str, int, int]:
    """(PIL mode, width, height) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.mode, im.width, im.height
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None


def probe_all(files: Sequence[ImageFile]) -> list[tuple[str, int, int]]:
    with concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
        return list(pool.map(lambda f: probe(f.path), files, chunksize=64))


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _as_color(im: Image.Image, color: str) -> Image.Image:
    if im.mode in _WIDE_MODES:
        # 16-bit, 32-bit and float images: PIL's own conversion to L clips instead of scaling
        a = np.asarray(im, dtype=np.float64)
        peak = a.max(initial=0.0)
        if im.mode.startswith("I;16"):
            top = 65535.0
        elif im.mode == "F" and peak <= 1.0:
            top = 1.0
        else:
            top = 255.0 if peak <= 255 else 65535.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("L" if color == "gray" else "RGB")


def fit_image(im: Image.Image, height: int, width: int, resize: str, fill: int) -> np.ndarray:
    """An L or RGB image -> uint8 (height, width[, 3]) by ``resize`` (fit, stretch, pad)."""
    w, h = im.size
    if resize == "stretch":
        if (w, h) != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(im)
    s = min(height / h, width / w)
    if resize == "pad":
        s = min(s, 1.0)
    nw, nh = (w, h) if s == 1.0 else (min(width, max(1, round(w * s))), min(height, max(1, round(h * s))))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    a = np.asarray(im)
    out = np.full((height, width) + a.shape[2:], fill, dtype=np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top : top + nh, left : left + nw] = a
    return out


def decode(path: Path, color: str, height: int, width: int, resize: str, fill: int) -> np.ndarray:
    """One image file -> uint8 (C, height, width), C = 1 (gray) or 3 (rgb)."""
    try:
        with Image.open(path) as im:
            im.load()
            a = fit_image(_as_color(im, color), height, width, resize, fill)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _unreadable(path, exc) from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def check_channels(files: Sequence[ImageFile], modes: Sequence[str], color: str, convert: bool) -> None:
    kinds = [channel_kind(m) for m in modes]
    other = next((i for i, k in enumerate(kinds) if k != color), None)
    if other is None or convert:
        return
    f, mode = files[other].path, modes[other]
    if color in kinds:
        same = files[kinds.index(color)].path
        raise DataError(
            f"{f}: a {kinds[other]} image (PIL mode {mode}) among {color} ones such as {same}: the images mix channel "
            f"counts; set data.convert=true to convert them all to data.color ({color!r})"
        )
    n = len(kinds)
    raise DataError(
        f"{f}: a {kinds[other]} image (PIL mode {mode}, like all {n}) but data.color = {color!r}; set "
        f"data.color={kinds[other]}, or data.convert=true to convert them to {color}"
    )


def canvas_size(cfg, files: Sequence[ImageFile], sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    if cfg.target_size is not None:
        return int(cfg.target_size[0]), int(cfg.target_size[1])
    first = sizes[0]
    for f, s in zip(files, sizes):
        if s != first:
            raise DataError(
                f"{f.path}: {s[1]}x{s[0]} (height x width) while {files[0].path} is {first[1]}x{first[0]}; images of "
                "different sizes need data.target_size=[height, width] (and data.resize: fit, stretch or pad)"
            )
    return first[1], first[0]


def decode_all(files: Sequence[ImageFile], cfg, height: int, width: int) -> np.ndarray:
    C = 1 if cfg.color == "gray" else 3
    out = np.empty((len(files), C, height, width), dtype=np.uint8)

    def job(i: int) -> None:
        out[i] = decode(files[i].path, cfg.color, height, width, cfg.resize, cfg.pad_fill)

    # PIL's warnings (palette transparency, odd EXIF) are harmless here; the filter is process-wide,
    # so it is set around the whole pool rather than inside its threads
    with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor(_threads()) as pool:
        warnings.simplefilter("ignore")
        for _ in pool.map(job, range(len(files)), chunksize=32):
            pass
    return out

