"""SVHN "multiple numbers": two house numbers pasted on one canvas, read as one token sequence.

Design reference sections 2.5 (generator) and 2.6 (labels). ``python run.py prepare multinumber
--svhn DIR --to OUT`` calls :func:`generate_multinumber`; training with ``data.data_dir=OUT`` calls
:func:`load_multinumber`.

Generator (:func:`generate_multinumber`)
    Pools: the SVHN format 1 records (``DIR/train``, ``DIR/extra`` when present, ``DIR/test``) whose
    number has 1 or 2 digits and a valid tight box (the validity rules of
    :func:`attn.data.svhn.crop_box`, without its 30% enlargement). Train and val pairs come from
    train (+ extra); test pairs from SVHN test/ (``test_pool="test"``, the default: no number is
    shared between training and test) or from the train pool (``test_pool="train"``).

    Sample ``id`` (0 .. count-1; the first ``round(count * split[0])`` ids are train, the next
    ``round(count * split[1])`` val, the rest test) uses only ``np.random.default_rng([seed, id])``,
    so every worker count gives byte-identical files. It draws two distinct pool records and, for
    each, crops the tight union box of its digits from the grayscale photo and resizes it to
    ``box`` x ``box`` (PIL bilinear, aspect ratio not kept; PIL writes uint8 directly, so there is no
    x256 overflow). The first box's top-left is uniform in [0, size - box]^2; the second is drawn
    up to 10 times until it keeps a 5-px gap to the first, then up to 30 times until it merely does
    not overlap, else the whole pair is drawn again (also when a tight box lies outside its photo).
    The background, black around the pasted numbers, is filled by ``cv2.inpaint`` (Telea) from the
    numbers, and the canvas is saved as a 3-channel (gray, R = G = B) PNG.

    Inpainting: the reference ran Telea at radius 32 on the full canvas, ~0.7 s per 224 x 224
    canvas on one core (measured: radius 1: 6 ms, 5: 24 ms, 8: 52 ms, 16: 185 ms, 32: 680 ms), i.e.
    ~100 CPU hours for 500k images. Small radii are fast but smear the digits' strokes into long
    straight streaks across the background. So by default (``inpaint_scale=4``) Telea runs on the
    canvas shrunk 4x (area averaging; a small pixel is known when all its pixels are) at radius
    32 / 4 = 8, and the fill is enlarged back (bilinear) and used only outside the numbers: the
    look of radius 32 (same smooth sweeps, no streaks) for ~3.5 ms. ``inpaint_scale=1`` runs the
    reference exactly. Radius and scale are options and recorded in meta.json.

    Reading order: if the boxes' vertical offset is below ``box``, the left number comes first,
    else the upper one.

Output folder ``OUT``::

    OUT/meta.json            every option, the source folders' record counts and digests, the format
                             version and the split sizes (written first; a rerun must match it)
    OUT/<split>/<id>.png     size x size x 3 uint8, split in train / val / test
    OUT/<split>.json         written when the whole dataset is done: a list of
                             {"id", "file": "<split>/<id>.png", "first": [tokens], "second": [tokens],
                              "boxes": [[x, y, w, h] of first, [x, y, w, h] of second],
                              "source": [[folder, index], [folder, index]]}
                             tokens as SVHN (1-9 = digits, 10 = digit "0"); index = 0-based position
                             of the record in ``<folder>/digitStruct.mat``
    OUT/attn-cache/          the loader's decoded arrays (see :func:`load_multinumber`)

Resuming: PNGs are written under a temporary name and renamed, so a present PNG is whole; a rerun
with the same options skips them and recomputes only their (cheap) draws for the labels, giving
the same final files as an uninterrupted run.

Labels for the model (section 2.6): first + [SEPARATOR_TOKEN] + second + [END_TOKEN], 4-6 tokens,
padded with IGNORE_INDEX to MAX_TOKENS = 6; 12 classes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from attn.data import svhn
from attn.data.base import IGNORE_INDEX, DataSpec, Split, TaskData
from attn.errors import DataError

FORMAT = "attn-multinumber"
FORMAT_VERSION = 1
"""Bump when what a generated folder holds changes; meta.json of another version is refused."""
CACHE_VERSION = 1
"""Bump when the loader's cache layout changes; older caches are then rebuilt."""
SEPARATOR_TOKEN = 11
END_TOKEN = svhn.END_TOKEN
CLASS_NAMES = svhn.CLASS_NAMES + ("<sep>",)
MAX_DIGITS = 2
"""Numbers with 1..MAX_DIGITS digits form the pools."""
MAX_TOKENS = 2 * MAX_DIGITS + 2
"""Label slots: two numbers, the separator and the end token."""
SPLITS = ("train", "val", "test")
PAD = 5
"""Gap in pixels the second box keeps from the first during the first PLACE_TRIES[0] tries."""
PLACE_TRIES = (10, 30)
"""Tries with the PAD gap, then tries that only forbid overlap; then the pair is drawn again."""
INPAINT_RADIUS = 32
"""Telea radius in canvas pixels (the reference's)."""
INPAINT_SCALE = 4
"""Telea runs on the canvas shrunk by this factor at radius INPAINT_RADIUS / INPAINT_SCALE (see the
module docstring: ~200x faster than radius 32 at full size, same look); 1 = the reference exactly."""
PNG_COMPRESSION = 3
"""zlib level of the PNGs: level 3 is ~10% smaller than 1 for ~1 ms more per image."""
MAX_PAIR_DRAWS = 10_000
"""Pair redraws before giving up on a sample. A draw places its pair with probability ~1 at 224/64
and still > 0.002 at the smallest valid size (2 * box + PAD) for box <= 1000, so all 10,000 fail
only when the drawn tight boxes keep lying outside their photos (broken source data)."""
PREPARE_HINT = "run `python run.py prepare multinumber --svhn DIR --to OUT`"
FOLDER_NAMES = ("train", "extra", "test")
"""SVHN folders; a pool stores each record's folder as an index into this tuple."""


# ---------------------------------------------------------------------------------------------
# pools
# ---------------------------------------------------------------------------------------------
@dataclass
class _Pool:
    """The usable 1-2 digit numbers of some SVHN folders, one row per record.

    folder: int8 (n,) index into FOLDER_NAMES. index: int64 (n,) position in its digitStruct.mat.
    files: n PNG names. box: float64 (n, 4) tight union box (x0, y0, x1, y1), not yet clipped to
    the photo. labels: int64 (n, 2) release labels (1-10), 0 after the last digit. ndig: int64 (n,).
    """

    folder: np.ndarray
    index: np.ndarray
    files: list[str]
    box: np.ndarray
    labels: np.ndarray
    ndig: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    def tokens(self, row: int) -> list[int]:
        return [int(t) for t in self.labels[row, : self.ndig[row]]]

    @staticmethod
    def concat(pools: Sequence["_Pool"]) -> "_Pool":
        return _Pool(
            folder=np.concatenate([p.folder for p in pools]),
            index=np.concatenate([p.index for p in pools]),
            files=[f for p in pools for f in p.files],
            box=np.concatenate([p.box for p in pools]),
            labels=np.concatenate([p.labels for p in pools]),
            ndig=np.concatenate([p.ndig for p in pools]),
        )


def _folder_pool(folder: str, ds: svhn.DigitStruct) -> _Pool:
    """Records of one digitStruct with 1..MAX_DIGITS digits and a valid tight box.

    Vectorised mirror of :func:`attn.data.svhn.crop_box` with ``expand=0`` before clipping (a
    Python call per record would take seconds on extra/): no negative field, positive height and
    width, integral labels in 1-10, a union box at least 1 px wide and high. Clipping to the photo
    needs its size and happens when a sample is drawn.
    """
    b = ds.boxes
    k = ds.num_digits
    lab = b[:, 1]
    bad = (
        (b[:, [0, 2, 3, 4]] < 0).any(axis=1)
        | (b[:, 0] <= 0)
        | (b[:, 4] <= 0)
        | (lab != np.round(lab))
        | (lab < 1)
        | (lab > 10)
    )
    rec = np.flatnonzero((k >= 1) & (k <= MAX_DIGITS))
    # MAX_DIGITS = 2, so a record's digits are its first and its last row.
    d0 = ds.offsets[rec]
    d1 = ds.offsets[rec] + k[rec] - 1
    x0 = np.minimum(b[d0, 2], b[d1, 2])
    y0 = np.minimum(b[d0, 3], b[d1, 3])
    x1 = np.maximum(b[d0, 2] + b[d0, 4], b[d1, 2] + b[d1, 4])
    y1 = np.maximum(b[d0, 3] + b[d0, 0], b[d1, 3] + b[d1, 0])
    ok = ~bad[d0] & ~bad[d1] & (x1 - x0 >= 1) & (y1 - y0 >= 1)
    rec, d0, d1 = rec[ok], d0[ok], d1[ok]
    labels = np.zeros((len(rec), 2), dtype=np.int64)
    labels[:, 0] = np.rint(lab[d0])
    two = k[rec] == 2
    labels[two, 1] = np.rint(lab[d1[two]])
    return _Pool(
        folder=np.full(len(rec), FOLDER_NAMES.index(folder), dtype=np.int8),
        index=rec.astype(np.int64),
        files=[ds.names[i] for i in rec.tolist()],
        box=np.stack([x0[ok], y0[ok], x1[ok], y1[ok]], axis=1),
        labels=labels,
        ndig=k[rec].astype(np.int64),
    )


def _read_folder(root: Path, folder: str) -> svhn.DigitStruct:
    """digitStruct.mat of one folder, after checking that the PNGs it names are there."""
    d = root / folder
    if not d.is_dir():
        raise DataError(
            f"{d}: folder not found; --svhn must be an SVHN format 1 root holding train/ and test/ "
            f"(extra/ optional) with their PNGs and digitStruct.mat ({svhn.PREPARE_HINT})"
        )
    ds = svhn.read_digit_struct(d / "digitStruct.mat")
    try:
        present = {e.name for e in os.scandir(d)}
    except OSError as exc:
        raise DataError(f"{d}: cannot list the folder ({exc.strerror})") from None
    missing = [n for n in ds.names if n not in present]
    if missing:
        raise DataError(
            f"{d}: {len(missing)} of {len(ds)} PNGs named in digitStruct.mat are missing, first "
            f"'{missing[0]}'; extract the folder again ({svhn.PREPARE_HINT})"
        )
    return ds


# ---------------------------------------------------------------------------------------------
# one sample
# ---------------------------------------------------------------------------------------------
@dataclass
class _Job:
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
    pools: dict[str, _Pool]  # "train": train (+ extra); "test": SVHN test (only with test_pool="test")

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


def _source_crop(job: _Job, pool: _Pool, row: int, render: bool):
    """(clipped tight box, uint8 (box, box) gray crop or None when not ``render``) of pool row
    ``row``; None when the tight box has less than 1 px inside the photo."""
    path = Path(job.root) / FOLDER_NAMES[pool.folder[row]] / pool.files[row]
    x0, y0, x1, y1 = pool.box[row]
    try:
        with Image.open(path) as im:
            # A single-digit row holding the union box: crop_box's clipping rule, exactly.
            clipped = svhn.crop_box(np.array([[y1 - y0, 1, x0, y0, x1 - x0]]), im.width, im.height, expand=0.0)
            if clipped is None:
                return None
            return clipped, (svhn.crop_image(im, clipped, job.box, "gray")[0] if render else None)
    except FileNotFoundError:
        raise DataError(f"{path}: PNG named in digitStruct.mat is missing; extract the folder again") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the PNG ({exc}); the file is damaged: extract the folder again") from None


def _draw(job: _Job, sid: int, render: bool):
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


def _write_png(path: Path, canvas: np.ndarray) -> None:
    """Save gray ``canvas`` as a 3-channel PNG atomically: a present ``<id>.png`` is always whole."""
    ok, buf = cv2.imencode(".png", cv2.merge([canvas, canvas, canvas]), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:  # pragma: no cover - encoding a valid uint8 array does not fail
        raise DataError(f"{path}: PNG encoding failed")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{path}: cannot write ({exc.strerror}); check the free space and permissions of --to"
        ) from None


_JOB: Optional[_Job] = None


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job
    # Ctrl-C reaches the whole process group: the parent stops the pool, workers finish their chunk.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one process per core already


def _work(start: int, stop: int, have: frozenset) -> np.ndarray:
    """Samples start..stop-1 -> int64 (stop - start, 6): pool row of first and second number, then
    (x, y) of first and second box. Writes the PNG of every sample not in ``have``."""
    job = _JOB
    assert job is not None
    out = np.empty((stop - start, 6), dtype=np.int64)
    for i, sid in enumerate(range(start, stop)):
        render = sid not in have
        rows, pos, canvas = _draw(job, sid, render)
        if render:
            _write_png(Path(job.out) / job.split_of(sid) / f"{sid}.png", canvas)
        out[i, :2] = rows
        out[i, 2:] = pos.ravel()
    return out


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------
def split_sizes(count: int, split: Sequence[float]) -> dict[str, int]:
    """{"train", "val", "test"} sample counts: round(count * split[0]), round(count * split[1]),
    the rest (consecutive id ranges in that order)."""
    n_train = min(count, int(round(count * split[0])))
    n_val = min(count - n_train, int(round(count * split[1])))
    return {"train": n_train, "val": n_val, "test": count - n_train - n_val}


def _check_options(size, box, count, split, seed, workers, test_pool, radius, scale) -> tuple[float, float, float]:
    def whole(name, value, low, what):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(f"{name} = {value!r} is invalid; use {what}")

    whole("box", box, 8, "an integer >= 8 (pixels of each number's square)")
    whole("size", size, 2 * box + PAD, f"an integer >= 2 * box + {PAD} = {2 * box + PAD}, so two boxes fit apart")
    whole("count", count, 1, "an integer >= 1")
    whole("seed", seed, 0, "an integer >= 0")
    if workers is not None:
        whole("workers", workers, 1, "an integer >= 1 (or leave it out for one per CPU)")
    whole("inpaint_radius", radius, 1, "an integer >= 1")
    whole("inpaint_scale", scale, 1, "an integer >= 1 (1 = Telea on the full canvas)")
    if scale > 1 and size // scale < 4:
        raise DataError(f"inpaint_scale = {scale} shrinks the {size} px canvas below 4 px; use a smaller scale")
    if test_pool not in ("test", "train"):
        raise DataError(f"test_pool = {test_pool!r} is invalid; use 'test' (pairs from SVHN test/) or 'train'")
    try:
        parts = tuple(float(s) for s in split)
    except (TypeError, ValueError):
        parts = ()
    if len(parts) != 3 or not all(math.isfinite(s) and s >= 0 for s in parts) or abs(sum(parts) - 1) > 1e-6:
        raise DataError(
            f"split = {tuple(split) if isinstance(split, (list, tuple)) else split!r} is invalid; use three "
            "non-negative fractions (train, val, test) that sum to 1, e.g. 0.8 0.1 0.1"
        )
    return parts


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write ({exc.strerror}); check the free space and permissions") from None


def _claim(out: Path, meta: dict) -> None:
    """Write OUT/meta.json, or check that the one there was written with the same options."""
    path = out / "meta.json"
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable ({exc}); delete {out} or choose another --to") from None
        # The SVHN folder may move; what it holds (records, digests) must not change.
        ignore = {"svhn_dir"}
        keys = sorted((set(have) | set(meta)) - ignore)
        diff = [k for k in keys if have.get(k) != meta.get(k)]
        if diff:
            k = diff[0]
            if k == "svhn":  # name the folders rather than dumping record digests
                what = f"SVHN folders {_records(have.get(k))}; this run reads {_records(meta[k])}"
            else:
                what = f"{k} = {json.dumps(have.get(k))}, this run asks for {json.dumps(meta.get(k))}"
            raise DataError(
                f"{path}: {out} was generated with {what} (differing: {', '.join(diff)}); rerun with the same "
                "options to resume, or choose another --to"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise DataError(
            f"{out}: not empty and holds no meta.json, so it is not an unfinished multinumber dataset; "
            "choose a new or empty folder for --to"
        )
    _write_atomic(path, _json_bytes(meta))


def _records(sources) -> str:
    """'train/ (33402 records), test/ (13068 records)' from meta.json's "svhn" entry."""
    if not isinstance(sources, dict):
        return "unknown"
    order = sorted(sources, key=lambda f: FOLDER_NAMES.index(f) if f in FOLDER_NAMES else len(FOLDER_NAMES))
    return ", ".join(
        f"{f}/ ({sources[f].get('records') if isinstance(sources[f], dict) else '?'} records)" for f in order
    )


def _present(folder: Path) -> set[int]:
    """Ids of the whole PNGs in ``folder``; leftovers of interrupted writes are removed."""
    ids = set()
    for e in os.scandir(folder):
        name = e.name
        if name.startswith(".") and name.endswith(".tmp"):
            Path(e.path).unlink(missing_ok=True)
        elif name.endswith(".png") and name[:-4].isdigit() and e.stat().st_size > 0:
            ids.add(int(name[:-4]))
    return ids


def _entries(job: _Job, split: str, ids: range, rec: np.ndarray) -> bytes:
    """The split JSON: one entry a line (see the module docstring)."""
    pool = job.pools[job.pool_key(split)]
    B = job.box
    lines = []
    for sid in ids:
        r0, r1, x0, y0, x1, y1 = rec[sid].tolist()
        entry = {
            "id": sid,
            "file": f"{split}/{sid}.png",
            "first": pool.tokens(r0),
            "second": pool.tokens(r1),
            "boxes": [[x0, y0, B, B], [x1, y1, B, B]],
            "source": [[FOLDER_NAMES[pool.folder[r]], int(pool.index[r])] for r in (r0, r1)],
        }
        lines.append(json.dumps(entry, separators=(",", ":")))
    return ("[\n" + ",\n".join(lines) + ("\n" if lines else "") + "]\n").encode("utf-8")


def generate_multinumber(
    svhn_dir: str | Path,
    out: str | Path,
    *,
    size: int = 224,
    box: int = 64,
    count: int = 500_000,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    workers: Optional[int] = None,
    test_pool: str = "test",
    progress: bool = True,
    inpaint_radius: int = INPAINT_RADIUS,
    inpaint_scale: int = INPAINT_SCALE,
) -> dict[str, int]:
    """Generate the multinumber dataset from SVHN format 1 at ``svhn_dir`` into ``out`` (layout,
    sampling and resume rules in the module docstring; design reference section 2.5).

    size: canvas side; box: side of each pasted number (size >= 2 * box + 5); count: samples;
    split: (train, val, test) fractions summing to 1; seed: base of the per-sample seeds;
    workers: processes (default: one per CPU), output is identical for every value;
    test_pool: "test" draws test pairs from SVHN test/ only, "train" from the train pool;
    progress: report on stderr; inpaint_radius, inpaint_scale: Telea radius in canvas pixels and the
    factor the canvas is shrunk by for it (:func:`inpaint`; 32 and 1 = the reference, slow).
    Returns {"train": n, "val": n, "test": n}. Bad options or input raise DataError.
    """
    parts = _check_options(size, box, count, split, seed, workers, test_pool, inpaint_radius, inpaint_scale)
    root = Path(svhn_dir).expanduser()
    out = Path(out).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: --svhn folder not found; point it at SVHN format 1 (train/, test/, optional extra/; "
            f"{svhn.PREPARE_HINT})"
        )
    folders = ["train"]
    if (root / "extra").exists():
        if not (root / "extra" / "digitStruct.mat").is_file():
            raise DataError(
                f"{root / 'extra'}: present but holds no digitStruct.mat; complete it ({svhn.PREPARE_HINT}) "
                "or move it away to draw from train/ alone"
            )
        folders.append("extra")
    if test_pool == "test":
        folders.append("test")
    t0 = time.monotonic()
    sources, folder_pools = {}, {}
    for folder in folders:
        ds = _read_folder(root, folder)
        folder_pools[folder] = _folder_pool(folder, ds)
        sources[folder] = {"records": len(ds), "pool": len(folder_pools[folder]), "sha256": ds.digest()}
    pools = {"train": _Pool.concat([folder_pools[f] for f in folders if f != "test"])}
    if test_pool == "test":
        pools["test"] = folder_pools["test"]
    for key, pool in pools.items():
        if len(pool) < 2:
            where = " + ".join(str(root / f) for f in folders if (f == "test") == (key == "test"))
            raise DataError(
                f"{where}: {len(pool)} usable numbers with 1-{MAX_DIGITS} digits (valid boxes); need at least 2 "
                "to draw pairs from: point --svhn at SVHN format 1"
            )
    sizes = split_sizes(count, parts)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "size": size,
        "box": box,
        "count": count,
        "split": list(parts),
        "split_sizes": sizes,
        "seed": seed,
        "test_pool": test_pool,
        "max_digits": MAX_DIGITS,
        "placement": {"pad": PAD, "tries": list(PLACE_TRIES)},
        "inpaint": {"method": "telea", "radius": inpaint_radius, "scale": inpaint_scale},
        "svhn_dir": str(root.resolve()),
        "svhn": sources,
        "png": {"channels": 3, "compression": PNG_COMPRESSION},
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create the folder ({exc.strerror}); choose another --to") from None
    _claim(out, meta)

    job = _Job(
        root=str(root),
        out=str(out),
        size=size,
        box=box,
        seed=seed,
        radius=inpaint_radius,
        scale=inpaint_scale,
        bounds=(sizes["train"], sizes["train"] + sizes["val"], count),
        test_pool=test_pool,
        pools=pools,
    )
    have: set[int] = set()
    for name in SPLITS:
        (out / name).mkdir(exist_ok=True)
        # A PNG counts only in its own split's folder and id range.
        have |= {i for i in _present(out / name) if i < count and job.split_of(i) == name}
    jsons = [out / f"{name}.json" for name in SPLITS]
    if len(have) == count and all(p.is_file() for p in jsons):
        if progress:
            print(f"multinumber: {out} is complete already (same options); nothing to do", file=sys.stderr, flush=True)
        return sizes
    # The split JSONs mark a finished dataset: drop them until this run has finished.
    for p in jsons:
        p.unlink(missing_ok=True)
    todo = count - len(have)
    if progress:
        print(
            f"multinumber: generating {todo} of {count} images into {out} from {root} "
            f"({', '.join(f'{k} {v}' for k, v in sizes.items())}; interrupted runs resume)",
            file=sys.stderr,
            flush=True,
        )
    rec = _run(job, count, have, workers or os.cpu_count() or 1, progress)
    ranges = {"train": range(0, job.bounds[0]), "val": range(*job.bounds[:2]), "test": range(job.bounds[1], count)}
    for name in SPLITS:
        _write_atomic(out / f"{name}.json", _entries(job, name, ranges[name], rec))
    if progress:
        dt = time.monotonic() - t0
        print(f"multinumber: done in {dt:.0f} s ({todo / max(dt, 1e-9):.1f} new images/s)", file=sys.stderr, flush=True)
    return sizes


def _run(job: _Job, count: int, have: set[int], workers: int, progress: bool) -> np.ndarray:
    """Run every sample (rendering those not in ``have``) in chunks -> int64 (count, 6) draws."""
    rec = np.empty((count, 6), dtype=np.int64)
    # Chunks of <= 64 ids: small enough to balance 2 workers on tiny runs and to stop fast on Ctrl-C.
    chunk = max(1, min(64, -(-count // (4 * workers))))
    chunks = [(a, min(count, a + chunk)) for a in range(0, count, chunk)]
    report = svhn._Reporter("multinumber", 0, count) if progress else None

    def args(a: int, b: int):
        return a, b, frozenset(i for i in range(a, b) if i in have)

    def done(a: int, b: int, res: np.ndarray) -> None:
        rec[a:b] = res
        if report is not None:
            report.update(b, b - a)

    workers = min(workers, len(chunks))
    try:
        if workers == 1:
            global _JOB
            saved, _JOB = _JOB, job
            try:
                for a, b in chunks:
                    done(a, b, _work(*args(a, b)))
            finally:
                _JOB = saved
            return rec
        # fork on Linux: workers start at once and inherit ``job`` without pickling it, and no helper
        # process (forkserver, resource tracker) outlives the pool. Safe here: the parent runs no
        # OpenCV or torch work while forking, and the workers use neither torch nor OpenCV threads.
        # Elsewhere (macOS, Windows) fork is unsafe or missing: spawn.
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        ex = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(job,))
        try:
            pending: dict = {}
            it = iter(chunks)
            while True:
                # A bounded window of chunks in flight: Ctrl-C waits for at most these.
                while len(pending) < 2 * workers:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    pending[ex.submit(_work, *args(*nxt))] = nxt
                if not pending:
                    break
                finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in finished:
                    a, b = pending.pop(fut)
                    done(a, b, fut.result())
        except concurrent.futures.process.BrokenProcessPool:
            raise DataError(
                f"{job.out}: a generator process died (killed, or out of memory); rerun the same command to resume"
            ) from None
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        return rec
    finally:
        if report is not None:
            report.close()


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------
def _dataset_dir(cfg) -> Path:
    if not cfg.data_dir:
        raise DataError(f"data.data_dir must point at a generated multinumber folder; {PREPARE_HINT}")
    out = Path(cfg.data_dir).expanduser()
    if not (out / "meta.json").is_file():
        raise DataError(
            f"{out / 'meta.json'}: not found, so {out} is no multinumber dataset; {PREPARE_HINT} "
            "with --to pointing at data.data_dir"
        )
    return out


def _read_meta(out: Path) -> tuple[dict, bytes]:
    path = out / "meta.json"
    raw = path.read_bytes()
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); {PREPARE_HINT} into a new folder") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: not a version {FORMAT_VERSION} {FORMAT} folder; {PREPARE_HINT} into a new folder")
    return meta, raw


def _read_split(out: Path, name: str, meta: dict) -> tuple[list[dict], bytes]:
    path = out / f"{name}.json"
    if not path.is_file():
        raise DataError(
            f"{path}: not found: the generation into {out} did not finish; {PREPARE_HINT} again with the "
            "same options to complete it"
        )
    raw = path.read_bytes()
    try:
        entries = json.loads(raw)
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); delete it and {PREPARE_HINT} again") from None
    want = meta["split_sizes"][name]
    if not isinstance(entries, list) or len(entries) != want:
        raise DataError(f"{path}: expected a list of {want} samples (meta.json); delete it and {PREPARE_HINT} again")
    return entries, raw


def _labels(entries: list[dict], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Entries -> labels int64 (N, MAX_TOKENS) = first + [SEPARATOR] + second + [END], IGNORE_INDEX
    padded; ids int64 (N,)."""
    labels = np.full((len(entries), MAX_TOKENS), IGNORE_INDEX, dtype=np.int64)
    ids = np.empty(len(entries), dtype=np.int64)
    for i, e in enumerate(entries):
        try:
            seq = list(e["first"]) + [SEPARATOR_TOKEN] + list(e["second"]) + [END_TOKEN]
            ids[i] = int(e["id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: entry {i} lacks 'id', 'first' or 'second'; regenerate the dataset") from None
        ok = all(isinstance(t, int) and 1 <= t <= 10 for t in list(e["first"]) + list(e["second"]))
        if not ok or not 1 <= len(e["first"]) <= MAX_DIGITS or not 1 <= len(e["second"]) <= MAX_DIGITS:
            raise DataError(f"{path}: entry {i} (id {ids[i]}) holds tokens other than 1-2 digits 1-10")
        labels[i, : len(seq)] = seq
    return labels, ids


def _read_png(path: Path, size: int, color: str) -> np.ndarray:
    """One generated PNG -> uint8 (C, size, size); C = 1 (channel 0: the PNG is gray in 3 channels)
    or 3 (RGB)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        raise DataError(f"{path}: missing or unreadable; {PREPARE_HINT} again with the same options") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None or img.shape != (size, size, 3) or img.dtype != np.uint8:
        raise DataError(
            f"{path}: not a {size}x{size} 3-channel PNG; delete it and {PREPARE_HINT} again with the same options"
        )
    if color == "gray":
        return img[None, :, :, 0]
    return img[:, :, ::-1].transpose(2, 0, 1)  # OpenCV decodes BGR


def _cache_files(cache_dir: Path, name: str, color: str) -> tuple[Path, Path]:
    return cache_dir / f"{name}-{color}.npy", cache_dir / f"{name}-{color}.json"


def _ensure_cache(
    out: Path, cache_dir: Path, name: str, color: str, meta: dict, key: dict, entries: list[dict], notes: list[str]
) -> Path:
    """The decoded images of one split, uint8 (N, C, S, S) in ``<cache_dir>/<split>-<color>.npy``,
    (re)built when missing or when its key file does not match ``key`` (meta.json's and the split
    JSON's sha256, the shape, the cache version). The key is written only after the array file is
    complete, so an interrupted build reads as stale."""
    npy, keyfile = _cache_files(cache_dir, name, color)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{cache_dir}: cannot create the cache folder ({exc.strerror}); set data.cache_dir to a writable folder"
        ) from None
    with svhn._locked(npy):
        try:
            if npy.is_file() and json.loads(keyfile.read_text()) == key:
                return npy
        except (OSError, ValueError):
            pass
        keyfile.unlink(missing_ok=True)
        S, C = meta["size"], 1 if color == "gray" else 3
        N = len(entries)
        partial = npy.with_name(npy.name + ".partial")
        arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(N, C, S, S))
        msg = f"multinumber: caching {N} {name} images ({color}) into {npy}"
        print(msg, file=sys.stderr, flush=True)
        notes.append(msg)
        report = svhn._Reporter(f"multinumber {name} cache", 0, N)
        # cv2 decodes with the GIL released: threads overlap the PNG work.
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            try:
                block = 1024
                for a in range(0, N, block):
                    b = min(N, a + block)
                    paths = [out / entries[i]["file"] for i in range(a, b)]
                    for i, img in enumerate(pool.map(lambda p: _read_png(p, S, color), paths)):
                        arr[a + i] = img
                    report.update(b, b - a)
            finally:
                report.close()
        arr.flush()
        del arr
        os.replace(partial, npy)
        _write_atomic(keyfile, _json_bytes(key))
    return npy


def _prepare_splits(cfg, notes: list[str]):
    if cfg.color not in ("gray", "rgb"):
        raise DataError(f"data.color = {cfg.color!r} is invalid; use 'gray' or 'rgb'")
    out = _dataset_dir(cfg)
    meta, meta_raw = _read_meta(out)
    cache_dir = Path(getattr(cfg, "cache_dir", None) or out / "attn-cache").expanduser()
    # Every split JSON is read and checked before any cache is built: an unfinished folder fails fast.
    read = {}
    for name in SPLITS:
        entries, raw = _read_split(out, name, meta)
        read[name] = (entries, raw, *_labels(entries, out / f"{name}.json"))
    result = {}
    for name, (entries, raw, labels, ids) in read.items():
        key = {
            "format": f"{FORMAT}-cache",
            "version": CACHE_VERSION,
            "meta_sha256": hashlib.sha256(meta_raw).hexdigest(),
            "split_sha256": hashlib.sha256(raw).hexdigest(),
            "shape": [len(entries), 1 if cfg.color == "gray" else 3, meta["size"], meta["size"]],
        }
        npy = _ensure_cache(out, cache_dir, name, cfg.color, meta, key, entries, notes)
        result[name] = (npy, labels, ids)
    return out, meta, result


def check_multinumber(cfg) -> None:
    """Validate the generated folder at ``cfg.data_dir`` and build the image caches for
    ``cfg.color``, without loading them (run before workers start, so they only read caches)."""
    _prepare_splits(cfg, [])


def load_multinumber(cfg) -> TaskData:
    """Load a generated multinumber folder (``cfg``: data_dir, color, mean, std; optional cache_dir,
    default ``data_dir/attn-cache``) for DRAM.

    Each split: images uint8 (N, C, S, S) with C = 1 (gray) or 3 (rgb, R = G = B) and S = meta.json's
    size, memory-mapped copy-on-write from the cache (pages load on use; no 20+ GB copy for 500k
    images); labels int64 (N, 6) = first + [11] + second + [0], then IGNORE_INDEX; ids int64 (N,) =
    sample id. Missing or unfinished folders raise DataError naming the prepare command.
    """
    notes: list[str] = []
    out, meta, parts = _prepare_splits(cfg, notes)
    splits = {}
    for name, (npy, labels, ids) in parts.items():
        # mmap_mode "c": writable for torch.from_numpy, yet nothing is written back to the cache.
        images = np.load(npy, mmap_mode="c") if labels.shape[0] else np.load(npy)
        splits[name] = Split(
            images=torch.from_numpy(images), labels=torch.from_numpy(labels), ids=torch.from_numpy(ids)
        )
    S = meta["size"]
    notes.append(
        f"multinumber: {out} ({S}x{S} canvas, {meta['box']} px numbers, seed {meta['seed']}, test pairs from "
        f"SVHN {meta['test_pool']}/); train {len(splits['train'])}, val {len(splits['val'])}, "
        f"test {len(splits['test'])}"
    )
    spec = DataSpec(
        channels=1 if cfg.color == "gray" else 3,
        height=S,
        width=S,
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        max_tokens=MAX_TOKENS,
        end_token=END_TOKEN,
    )
    return TaskData(
        spec=spec,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        mean=cfg.mean,
        std=cfg.std,
        crop=None,
        notes=notes,
    )
