"""Small SVHN format 1 folders for tests: real MNIST digits on textured backgrounds, and a
``digitStruct.mat`` written in the exact layout of the official release.

The official ``digitStruct.mat`` is a MATLAB v7.3 file, i.e. HDF5 behind a 512-byte MATLAB
userblock. MATLAB stores the 1 x N struct array ``digitStruct`` as a group whose fields ``name`` and
``bbox`` are N x 1 object-reference datasets; every referenced object lives in the group ``#refs#``:

    /digitStruct/name   (N, 1) refs -> #refs#/x   uint16 (len, 1) character codes, MATLAB_class 'char'
    /digitStruct/bbox   (N, 1) refs -> #refs#/y   group, MATLAB_class 'struct', fields
        height, label, left, top, width:
            one digit:   (1, 1) float64 dataset holding the value, MATLAB_class 'double'
            k digits:    (k, 1) refs, each -> #refs#/z, a (1, 1) float64 dataset

Labels follow the release: 1-9 are the digits, 10 is digit 0. A record's boxes are the digits'
tight boxes (left, top, width, height) in pixels, as pasted. The generator is seeded and fast (a few
hundred images per second), so tests can make folders on the fly.

    make_svhn_folder(root, "train", 200, seed=0)         -> root/train/{1..200}.png + digitStruct.mat
    make_svhn_dataset(root, n_train=200, n_test=50)      -> root with train/, test/ (and extra/)
"""

from __future__ import annotations

import functools
import string
import time
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from PIL import Image

from attn.data.idx import read_idx
from attn.data.mnist import EMBEDDED_DIR

FIELDS = ("height", "label", "left", "top", "width")
LONG_NUMBER_DIGITS = 6
"""Digits of the ``long_numbers`` records: one more than SVHN's usual ``max_digits`` of 5."""


# ---------------------------------------------------------------------------------------------
# digitStruct.mat writer (MATLAB v7.3 layout)
# ---------------------------------------------------------------------------------------------
def matlab_header(when: float | None = None) -> bytes:
    """The 512-byte userblock MATLAB puts in front of a v7.3 MAT-file's HDF5 data: 116 bytes of
    text, 8 bytes of subsystem offset, version 0x0200, endian indicator 'IM', zeros to 512."""
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(0 if when is None else when))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {stamp} HDF5 schema 1.00 .".encode("ascii")
    head = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    return head.ljust(512, b"\x00")


_REF_CHARS = string.ascii_lowercase + string.ascii_uppercase + string.digits


def _ref_name(i: int) -> str:
    """MATLAB-like short names for the objects in #refs# ('a', 'b', ..., 'ab', ...)."""
    out = _REF_CHARS[i % 26]  # first character a letter, as MATLAB's are
    i //= 26
    while i:
        out += _REF_CHARS[i % len(_REF_CHARS)]
        i //= len(_REF_CHARS)
    return out


def _class_attr(obj, name: str) -> None:
    obj.attrs.create("MATLAB_class", np.bytes_(name))


class _Refs:
    """Creates the objects of ``#refs#`` under MATLAB-like names and hands back their references."""

    def __init__(self, f: h5py.File) -> None:
        self.group = f.create_group("#refs#")
        # MATLAB keeps a canonical empty array at #refs#/a.
        empty = self.group.create_dataset("a", data=np.zeros(2, dtype=np.uint64))
        _class_attr(empty, "canonical empty")
        empty.attrs.create("MATLAB_empty", np.uint8(1))
        self.count = 1

    def _name(self) -> str:
        name = _ref_name(self.count)
        self.count += 1
        return name

    def double(self, value: float) -> h5py.Reference:
        ds = self.group.create_dataset(self._name(), data=np.array([[float(value)]]))
        _class_attr(ds, "double")
        return ds.ref

    def char(self, text: str) -> h5py.Reference:
        # MATLAB stores a 1 x len char row column-major: HDF5 shape (len, 1), UTF-16 code units.
        ds = self.group.create_dataset(self._name(), data=np.array([[ord(c)] for c in text], dtype=np.uint16))
        _class_attr(ds, "char")
        ds.attrs.create("MATLAB_int_decode", np.int32(2))
        return ds.ref

    def struct(self) -> h5py.Group:
        g = self.group.create_group(self._name())
        _class_attr(g, "struct")
        return g


def write_digit_struct(path: Path, records: Sequence[dict], libver: str = "earliest") -> None:
    """Write ``records`` (dicts with ``name`` and ``boxes`` = [(height, label, left, top, width), ...])
    as an official-layout ``digitStruct.mat`` at ``path``. ``libver="earliest"`` gives the HDF5 file
    format MATLAB writes (version-1 object headers, symbol-table groups); "latest" a newer one."""
    path = Path(path)
    with h5py.File(path, "w", userblock_size=512, libver=libver) as f:
        refs = _Refs(f)
        names, bboxes = [], []
        for rec in records:
            names.append(refs.char(rec["name"]))
            g = refs.struct()
            boxes = rec["boxes"]
            for j, field in enumerate(FIELDS):
                values = [b[j] for b in boxes]
                if len(values) == 1:
                    ds = g.create_dataset(field, data=np.array([[float(values[0])]]))
                    _class_attr(ds, "double")
                else:
                    col = np.empty((len(values), 1), dtype=h5py.ref_dtype)
                    for k, v in enumerate(values):
                        col[k, 0] = refs.double(v)
                    ds = g.create_dataset(field, data=col, dtype=h5py.ref_dtype)
                    _class_attr(ds, "cell")
            bboxes.append(g.ref)
        top = f.create_group("digitStruct")
        _class_attr(top, "struct")
        for field, col in (("name", names), ("bbox", bboxes)):
            arr = np.empty((len(col), 1), dtype=h5py.ref_dtype)
            arr[:, 0] = col
            top.create_dataset(field, data=arr, dtype=h5py.ref_dtype)
    with open(path, "r+b") as fh:
        fh.write(matlab_header(path.stat().st_mtime))


# ---------------------------------------------------------------------------------------------
# images: MNIST digits on textured backgrounds
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _mnist_pool() -> list[list[np.ndarray]]:
    """Tight-cropped MNIST test digits grouped by class: pool[d] = list of uint8 (h, w) arrays."""
    images = read_idx(EMBEDDED_DIR / "t10k-images-idx3-ubyte.gz")[:3000]
    labels = read_idx(EMBEDDED_DIR / "t10k-labels-idx1-ubyte.gz")[:3000]
    pool: list[list[np.ndarray]] = [[] for _ in range(10)]
    for img, lab in zip(images, labels):
        rows = np.flatnonzero(img.max(axis=1) > 30)
        cols = np.flatnonzero(img.max(axis=0) > 30)
        pool[int(lab)].append(img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    return pool


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour gradient plus pixel noise: float32 (h, w, 3) in [0, 255]."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.0) / 2.0
    bg = c0 + (c1 - c0) * t[..., None]
    bg += rng.normal(0.0, 8.0, (h, w, 3))
    return bg.astype(np.float32)


def _render(rng: np.random.Generator, digits: list[int]) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Paste ``digits`` (0-9) left to right; return uint8 (H, W, 3) and tight boxes (left, top, w, h)."""
    pool = _mnist_pool()
    glyphs = [pool[d][rng.integers(len(pool[d]))] for d in digits]
    dh = int(rng.integers(20, 37))
    sizes = [(max(3, round(g.shape[1] * dh / g.shape[0])), dh) for g in glyphs]
    gaps = rng.integers(1, 5, len(digits))
    total = sum(w for w, _ in sizes) + int(gaps[:-1].sum())
    H = int(rng.integers(max(40, dh + 4), 91))
    W = int(rng.integers(max(60, total + 4), max(61, total + 4, 200) + 1))
    img = _background(rng, H, W)
    ink = np.where(img.mean() > 128, rng.uniform(0, 70, 3), rng.uniform(185, 255, 3)).astype(np.float32)
    x = int(rng.integers(2, W - total - 1))
    y0 = int(rng.integers(2, H - dh - 1))  # a house number's digits share a baseline, give or take 2 px
    boxes = []
    for g, (w, h), gap in zip(glyphs, sizes, gaps):
        y = int(np.clip(y0 + rng.integers(-2, 3), 0, H - h))
        alpha = np.asarray(Image.fromarray(g).resize((w, h), Image.BILINEAR), dtype=np.float32)[..., None] / 255.0
        img[y : y + h, x : x + w] = img[y : y + h, x : x + w] * (1 - alpha) + ink * alpha
        boxes.append((x, y, w, h))
        x += w + int(gap)
    return np.clip(img, 0, 255).astype(np.uint8), boxes


def make_svhn_folder(
    root: Path,
    split: str,
    n: int,
    seed: int,
    max_len: int = 3,
    long_numbers: int = 0,
    bad_boxes: int = 0,
) -> list[dict]:
    """Write ``root/split/1.png .. n.png`` and ``root/split/digitStruct.mat``; return the records.

    Numbers have 1..max_len digits (the first records cycle through every length, so 1- and
    multi-digit ones are always present); ``long_numbers`` records hold LONG_NUMBER_DIGITS digits;
    ``bad_boxes`` records get an invalid box (negative top, or zero width), alternately. The special
    records sit at seeded positions after the first ``max_len``.

    Each record: ``name`` ('7.png'), ``index`` (0-based position in digitStruct), ``digits`` ('105'),
    ``labels`` (official: [1, 10, 5]), ``boxes`` [(height, label, left, top, width), ...] as stored,
    ``size`` (width, height) of the PNG, ``bad`` (True for an invalid box), ``long`` (True for a long
    number).
    """
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    lengths = rng.integers(1, max_len + 1, n)
    lengths[: min(n, max_len)] = np.arange(1, min(n, max_len) + 1)
    special = rng.permutation(np.arange(min(n, max_len), n))
    if long_numbers + bad_boxes > len(special):
        raise ValueError(f"n = {n} leaves room for only {len(special)} long or bad records")
    long_at = set(special[:long_numbers].tolist())
    bad_at = {int(i): k for k, i in enumerate(special[long_numbers : long_numbers + bad_boxes])}
    records = []
    for i in range(n):
        k = LONG_NUMBER_DIGITS if i in long_at else int(lengths[i])
        digits = [int(d) for d in rng.integers(0, 10, k)]
        img, tight = _render(rng, digits)
        name = f"{i + 1}.png"
        Image.fromarray(img).save(folder / name, compress_level=1)
        boxes = [(h, 10 if d == 0 else d, left, top, w) for d, (left, top, w, h) in zip(digits, tight)]
        if i in bad_at:
            h, lab, left, top, w = boxes[0]
            boxes[0] = (h, lab, left, -1, w) if bad_at[i] % 2 == 0 else (h, lab, left, top, 0)
        records.append(
            {
                "name": name,
                "index": i,
                "digits": "".join(map(str, digits)),
                "labels": [b[1] for b in boxes],
                "boxes": boxes,
                "size": (img.shape[1], img.shape[0]),
                "bad": i in bad_at,
                "long": i in long_at,
            }
        )
    write_digit_struct(folder / "digitStruct.mat", records)
    return records


def make_svhn_dataset(root: Path, n_train: int, n_test: int, n_extra: int = 0, seed: int = 0) -> Path:
    """A whole format 1 root: ``train/``, ``test/`` and, when ``n_extra`` > 0, ``extra/``; numbers of
    1-3 digits. Returns ``root`` (use it as ``data.data_dir``; set ``data.use_extra=false`` without extra)."""
    root = Path(root)
    make_svhn_folder(root, "train", n_train, seed)
    make_svhn_folder(root, "test", n_test, seed + 1)
    if n_extra:
        make_svhn_folder(root, "extra", n_extra, seed + 2)
    return root
