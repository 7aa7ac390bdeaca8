"""The pools a multinumber dataset draws from: the SVHN records whose number has 1..MAX_DIGITS digits
and a valid tight box (the rules of :func:`attn.data.svhn.crop_box`, without its 30% enlargement)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from attn.data.multinumber.format import FOLDER_NAMES, MAX_DIGITS
from attn.data.svhn import PREPARE_HINT as SVHN_PREPARE_HINT
from attn.data.svhn import DigitStruct, read_digit_struct
from attn.errors import DataError


@dataclass
class Pool:
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
    def concat(pools: Sequence["Pool"]) -> "Pool":
        return Pool(
            folder=np.concatenate([p.folder for p in pools]),
            index=np.concatenate([p.index for p in pools]),
            files=[f for p in pools for f in p.files],
            box=np.concatenate([p.box for p in pools]),
            labels=np.concatenate([p.labels for p in pools]),
            ndig=np.concatenate([p.ndig for p in pools]),
        )


def folder_pool(folder: str, ds: DigitStruct) -> Pool:
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
    return Pool(
        folder=np.full(len(rec), FOLDER_NAMES.index(folder), dtype=np.int8),
        index=rec.astype(np.int64),
        files=[ds.names[i] for i in rec.tolist()],
        box=np.stack([x0[ok], y0[ok], x1[ok], y1[ok]], axis=1),
        labels=labels,
        ndig=k[rec].astype(np.int64),
    )


def read_folder(root: Path, folder: str) -> DigitStruct:
    """digitStruct.mat of one folder, after checking that the PNGs it names are there."""
    d = root / folder
    if not d.is_dir():
        raise DataError(
            f"{d}: folder not found; --svhn must be an SVHN format 1 root holding train/ and test/ "
            f"(extra/ optional) with their PNGs and digitStruct.mat ({SVHN_PREPARE_HINT})"
        )
    ds = read_digit_struct(d / "digitStruct.mat")
    try:
        present = {e.name for e in os.scandir(d)}
    except OSError as exc:
        raise DataError(f"{d}: cannot list the folder ({exc.strerror})") from None
    missing = [n for n in ds.names if n not in present]
    if missing:
        raise DataError(
            f"{d}: {len(missing)} of {len(ds)} PNGs named in digitStruct.mat are missing, first "
            f"'{missing[0]}'; extract the folder again ({SVHN_PREPARE_HINT})"
        )
    return ds



def source_folders(root: Path, test_pool: str) -> list[str]:
    """The SVHN folders a generation reads: train/, extra/ when present, test/ for a test pool of its own."""
    if not root.is_dir():
        raise DataError(
            f"{root}: --svhn folder not found; point it at SVHN format 1 (train/, test/, optional extra/; "
            f"{SVHN_PREPARE_HINT})"
        )
    folders = ["train"]
    if (root / "extra").exists():
        if not (root / "extra" / "digitStruct.mat").is_file():
            raise DataError(
                f"{root / 'extra'}: present but holds no digitStruct.mat; complete it ({SVHN_PREPARE_HINT}) "
                "or move it away to draw from train/ alone"
            )
        folders.append("extra")
    if test_pool == "test":
        folders.append("test")
    return folders


def build_pools(root: Path, folders: Sequence[str], test_pool: str) -> tuple[dict[str, Pool], dict[str, dict]]:
    """({"train": train (+ extra) pool, "test": SVHN test pool with test_pool "test"}, per folder
    {"records", "pool", "sha256"} for meta.json); DataError when a pool holds fewer than 2 numbers."""
    sources, folder_pools = {}, {}
    for folder in folders:
        ds = read_folder(root, folder)
        folder_pools[folder] = folder_pool(folder, ds)
        sources[folder] = {"records": len(ds), "pool": len(folder_pools[folder]), "sha256": ds.digest()}
    pools = {"train": Pool.concat([folder_pools[f] for f in folders if f != "test"])}
    if test_pool == "test":
        pools["test"] = folder_pools["test"]
    for key, pool in pools.items():
        if len(pool) < 2:
            where = " + ".join(str(root / f) for f in folders if (f == "test") == (key == "test"))
            raise DataError(
                f"{where}: {len(pool)} usable numbers with 1-{MAX_DIGITS} digits (valid boxes); need at least 2 "
                "to draw pairs from: point --svhn at SVHN format 1"
            )
    return pools, sources
