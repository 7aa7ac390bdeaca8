"""Loading SVHN format 1 for a run: the finished caches of the folders read, split and labelled.

Splits hold the stored ``image_size`` crops: images uint8 (N, C, S, S), labels int64
(N, max_digits + 1) (:mod:`attn.data.svhn.labels`), ids int64 (N,) = the record's position in its
folder's digitStruct.mat plus :data:`attn.data.svhn.layout.ID_OFFSET`, boxes float32 (N, 4) (the
number's tight box in crop pixels); the model gets ``crop_size`` crops. How train (+ extra) is split
into train and validation, and which records are dropped or skipped: docs/data.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from attn.data.base import DataSpec, Split, TaskData
from attn.data.cache import Notes
from attn.data.svhn.cache import ensure_cache
from attn.data.svhn.labels import CLASS_NAMES, END_TOKEN, label_matrix
from attn.data.svhn.layout import ID_OFFSET, data_root


@dataclass
class _Folder:
    """What a load needs from one cache file, without the images."""

    path: Path
    folder: str
    status: np.ndarray
    offsets: np.ndarray
    digit_labels: np.ndarray
    number_boxes: np.ndarray
    """(N, 4) float32 tight union box of each record's digits (x0, y0, x1, y1) in the pixels of its
    stored S x S crop (zeros for bad records)."""

    @property
    def n(self) -> int:
        return len(self.status)


def _read_index(path: Path, folder: str) -> _Folder:
    with h5py.File(path, "r") as f:
        status, offsets, boxes = f["status"][()], f["offsets"][()], f["boxes"][()]
        crop, size = f["crop_box"][()].astype(np.float64), int(f.attrs["image_size"])
    return _Folder(path, folder, status, offsets, boxes[:, 1], _number_boxes(boxes, offsets, crop, status, size))


def _number_boxes(boxes: np.ndarray, offsets: np.ndarray, crop: np.ndarray, status: np.ndarray, size: int) -> np.ndarray:
    """Tight union boxes of the digits, mapped from source pixels into the stored size x size crop:
    (x - crop_x0) * size / crop_width (likewise y). Bad records (status != 0) get zeros."""
    out = np.zeros((len(status), 4), dtype=np.float32)
    ok = (status == 0) & (np.diff(offsets) > 0)
    if not ok.any():
        return out
    starts = offsets[:-1][ok]
    left, top = boxes[:, 2], boxes[:, 3]
    right, bottom = left + boxes[:, 4], top + boxes[:, 0]
    # reduceat over each record's digit rows; ok records have at least one row, so the segments are non-empty
    x0, y0 = np.minimum.reduceat(left, starts), np.minimum.reduceat(top, starts)
    x1, y1 = np.maximum.reduceat(right, starts), np.maximum.reduceat(bottom, starts)
    ends = offsets[1:][ok]
    # reduceat runs to the next start, which includes rows of skipped records in between: recompute those
    gap = np.flatnonzero(ends != np.append(starts[1:], len(boxes)))
    for i in gap:
        a, b = starts[i], ends[i]
        x0[i], y0[i], x1[i], y1[i] = left[a:b].min(), top[a:b].min(), right[a:b].max(), bottom[a:b].max()
    c = crop[ok]
    sx, sy = size / (c[:, 2] - c[:, 0]), size / (c[:, 3] - c[:, 1])
    out[ok] = np.stack([(x0 - c[:, 0]) * sx, (y0 - c[:, 1]) * sy, (x1 - c[:, 0]) * sx, (y1 - c[:, 1]) * sy], axis=1)
    return out


def _fill(dst: np.ndarray, dst_at: int, path: Path, rows: np.ndarray, block: int = 8192) -> int:
    """Copy the cached images of ``rows`` (sorted) into ``dst`` from ``dst_at``, reading block by block
    so that only one block of the source is in memory besides ``dst``."""
    if len(rows) == 0:
        return dst_at
    with h5py.File(path, "r") as f:
        images = f["images"]
        for a in range(0, int(rows[-1]) + 1, block):
            lo, hi = np.searchsorted(rows, [a, a + block])
            if hi > lo:
                sel = rows[lo:hi]
                chunk = images[a : int(sel[-1]) + 1]
                dst[dst_at : dst_at + len(sel)] = chunk[sel - a]
                dst_at += len(sel)
    return dst_at


def _caches(cfg, notes: Notes = None) -> dict[str, Path]:
    """The cache file of every folder the config reads, built where missing or stale."""
    root = data_root(cfg)
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else root / "attn-cache"
    folders = ["train"] + (["extra"] if cfg.use_extra else []) + ["test"]
    return {
        folder: ensure_cache(root / folder, cache_dir, image_size=cfg.image_size, color=cfg.color, notes=notes)
        for folder in folders
    }


def check_svhn(cfg) -> None:
    """Check the SVHN folders and build their caches, without loading the images (the driver runs
    this before any worker starts, so that workers only read finished caches)."""
    _caches(cfg)



def _readable(fo: _Folder, max_digits: int) -> np.ndarray:
    """bool (N,): records whose label the model can emit: 1 to ``max_digits`` digits, each label 1-10."""
    ndig = np.diff(fo.offsets)
    labels = np.rint(fo.digit_labels)
    bad_label = (labels < 1) | (labels > 10) | (labels != fo.digit_labels)
    starts = np.minimum(fo.offsets[:-1], max(len(labels) - 1, 0))
    any_bad = np.zeros(fo.n, dtype=bool)
    if len(labels):
        any_bad = np.add.reduceat(bad_label.astype(np.int64), starts) > 0
        any_bad &= ndig > 0  # reduceat gives an empty record its next row: not its own
    return (ndig >= 1) & (ndig <= max_digits) & ~any_bad


def _kept(index: dict[str, _Folder], max_digits: int, notes: list[str]) -> dict[str, np.ndarray]:
    """Per folder, bool (N,): the records a run uses, counted in the notes. Training folders: a usable
    box and a readable label (:func:`_readable`). test/: every readable record, those with an unusable
    box cropped by :func:`attn.data.svhn.crop.fallback_box`, so that the test error counts every image
    (the unreadable ones are counted as errors: :func:`_unreadable_test`)."""
    keep = {}
    for name, fo in index.items():
        bad, readable = fo.status != 0, _readable(fo, max_digits)
        if name == "test":
            keep[name] = readable
            if (bad & readable).any():
                notes.append(f"svhn: kept {int((bad & readable).sum())} of {fo.n} test images with a negative, "
                             "empty or out-of-image digit box, cropped from their valid digits (or whole)")
            continue
        long = ~bad & ~readable
        if bad.any():
            notes.append(
                f"svhn: dropped {int(bad.sum())} of {fo.n} {name} images with a negative, empty or out-of-image "
                "digit box"
            )
        if long.any():
            notes.append(f"svhn: skipped {int(long.sum())} of {fo.n} {name} images with more than {max_digits} digits")
        keep[name] = ~bad & readable
    return keep


def _unreadable_test(index: dict[str, _Folder], keep: dict[str, np.ndarray], max_digits: int,
                     notes: list[str]) -> int:
    """Test records whose number the model cannot emit (more than ``max_digits`` digits, a label
    outside 1-10): not fed, counted as errors in the test error (``Split.missing``)."""
    n = int((~keep["test"]).sum())
    if n:
        notes.append(f"svhn: {n} of {index['test'].n} test images hold a number that {max_digits} digits and the end "
                     "token cannot spell; the test error counts them as errors")
    return n


def _split_rows(cfg, index: dict[str, _Folder], keep: dict[str, np.ndarray], notes: list[str]):
    """{split: [(folder, row indices)]}: a seeded val share of all pooled records (train, + extra),
    drawn before dropping any, so the split depends only on the seed and the record counts."""
    pooled = ["train"] + (["extra"] if cfg.use_extra else [])
    total = sum(index[name].n for name in pooled)
    perm = np.random.default_rng(cfg.split_seed).permutation(total)
    is_val = np.zeros(total, dtype=bool)
    is_val[perm[: int(round(cfg.val_fraction * total))]] = True
    rows = {"train": [], "val": []}
    at = 0
    for name in pooled:
        fo = index[name]
        v = is_val[at : at + fo.n]
        at += fo.n
        rows["train"].append((fo, np.flatnonzero(keep[name] & ~v)))
        rows["val"].append((fo, np.flatnonzero(keep[name] & v)))
    rows["test"] = [(index["test"], np.flatnonzero(keep["test"]))]
    if cfg.use_extra:
        notes.append(
            f"svhn: train + extra pooled ({total} images), validation = seeded {cfg.val_fraction:g} share "
            f"(split_seed {cfg.split_seed})"
        )
    return rows


def _make_split(parts: list[tuple[_Folder, np.ndarray]], channels: int, size: int, max_digits: int) -> Split:
    """The images, labels, ids and boxes of ``parts`` (folder, sorted rows), in that order."""
    n = sum(len(r) for _, r in parts)
    images = np.empty((n, channels, size, size), dtype=np.uint8)
    labels, ids, boxes, at = [], [], [], 0
    for fo, r in parts:
        at = _fill(images, at, fo.path, r)
        labels.append(label_matrix(fo.offsets, fo.digit_labels, r, max_digits))
        ids.append(r.astype(np.int64) + ID_OFFSET[fo.folder])
        boxes.append(fo.number_boxes[r])
    return Split(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(np.concatenate(labels) if labels else np.zeros((0, max_digits + 1), np.int64)),
        ids=torch.from_numpy(np.concatenate(ids) if ids else np.zeros(0, np.int64)),
        boxes=torch.from_numpy(np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)),
    )


def load_svhn(cfg) -> TaskData:
    """Load SVHN format 1 as digit sequences for DRAM; ``cfg`` is a :class:`attn.config.DataConfig`.
    Shapes of the splits: the module docstring."""
    notes: list[str] = []
    index = {folder: _read_index(path, folder) for folder, path in _caches(cfg, notes).items()}
    md = cfg.max_digits
    keep = _kept(index, md, notes)
    rows = _split_rows(cfg, index, keep, notes)
    missing = _unreadable_test(index, keep, md, notes)
    C = 1 if cfg.color == "gray" else 3
    canvas = None
    side = getattr(cfg, "crop_size", None)
    if cfg.task == "svhn_background":
        from attn.data.background import Canvas

        canvas = Canvas(cfg.canvas_size, cfg.eval_placement, cfg.placement_seed)
        side = cfg.canvas_size
    spec = DataSpec(
        channels=C,
        height=side,
        width=side,
        num_classes=len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        max_tokens=md + 1,
        end_token=END_TOKEN,
    )
    splits = {split: _make_split(parts, C, cfg.image_size, md) for split, parts in rows.items()}
    splits["test"].missing = missing
    return TaskData(
        spec=spec,
        **splits,
        mean=cfg.mean,
        std=cfg.std,
        crop=None if canvas is not None else cfg.crop_size,
        canvas=canvas,
        notes=notes,
    )
