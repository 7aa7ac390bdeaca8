"""digitStruct.mat of SVHN format 1 (MATLAB v7.3, i.e. HDF5 behind a 512-byte userblock), parsed with h5py.

The layout (two N x 1 object-reference arrays ``digitStruct/name`` and ``digitStruct/bbox``, one
struct of five fields per record) is in docs/data.md. :func:`read_digit_struct` returns every record
as one :class:`DigitStruct`: names, and float64 (D, 5) digit rows (height, label, left, top, width)
with int64 (N + 1,) offsets. Each record is read by the direct reader of
:mod:`attn.data.svhn.digitstruct_fast` where it can, else through h5py here; a sample of the direct
reader's records is read again through h5py every time, so it can cost time, never labels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np

from attn.data.cache import say
from attn.errors import DataError

FIELDS = ("height", "label", "left", "top", "width")
"""The bbox fields of digitStruct.mat, in the column order of :attr:`DigitStruct.boxes`."""
CHECK_SAMPLES = 64
"""Records of a direct parse read again through h5py (spread over the file, first and last included)."""

@dataclass
class DigitStruct:
    """The records of one digitStruct.mat.

    names: N file names. boxes: float64 (D, 5), one row per digit: (height, label, left, top, width)
    as stored (label 10 = digit 0); record n's digits are ``boxes[offsets[n]:offsets[n + 1]]``, left
    to right. offsets: int64 (N + 1,).
    """

    names: list[str]
    boxes: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def record(self, n: int) -> tuple[str, np.ndarray]:
        """(file name, (k, 5) digit rows) of record n."""
        return self.names[n], self.boxes[self.offsets[n] : self.offsets[n + 1]]

    @property
    def num_digits(self) -> np.ndarray:
        return np.diff(self.offsets)

    def digest(self) -> str:
        """sha256 of the parsed content: equal for files that describe the same records."""
        h = hashlib.sha256()
        h.update("\n".join(self.names).encode("utf-8"))
        h.update(np.ascontiguousarray(self.offsets, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.boxes, dtype="<f8").tobytes())
        return h.hexdigest()


def _h5py_record(f: h5py.File, name_ref, bbox_ref, path: Path, n: int) -> tuple[str, list[list[float]]]:
    """One record through h5py: slow, but reads any layout and names what is wrong."""
    where = f"{path}: record {n}"
    try:
        chars = f[name_ref][()]
    except Exception as exc:  # noqa: BLE001 - h5py raises several types for bad references
        raise DataError(f"{where}: its 'name' reference cannot be read ({exc}); the file is damaged") from None
    if not isinstance(chars, np.ndarray) or chars.dtype.kind not in "ui":
        raise DataError(f"{where}: 'name' is not a MATLAB char array; not an SVHN digitStruct.mat")
    name = "".join(map(chr, chars.ravel().tolist()))
    where = f"{path}: record {n} ('{name}')"
    try:
        group = f[bbox_ref]
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{where}: its 'bbox' reference cannot be read ({exc}); the file is damaged") from None
    if not isinstance(group, h5py.Group):
        raise DataError(f"{where}: 'bbox' is not a struct; expected fields {', '.join(FIELDS)}")
    columns = []
    for field in FIELDS:
        ds = group.get(field)
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"{where}: bbox has no field '{field}'; expected fields {', '.join(FIELDS)}")
        arr = ds[()]
        if ds.dtype == h5py.ref_dtype:
            values = []
            for ref in np.ravel(arr):
                v = f[ref][()]
                if np.size(v) != 1 or np.asarray(v).dtype.kind not in "fiu":
                    raise DataError(f"{where}: bbox.{field} refers to something other than one number")
                values.append(float(np.ravel(v)[0]))
        elif np.asarray(arr).dtype.kind in "fiu":
            values = [float(v) for v in np.ravel(arr)]
        else:
            raise DataError(f"{where}: bbox.{field} holds {ds.dtype}; expected numbers or references to numbers")
        columns.append(values)
    return name, columns


def read_digit_struct(path: str | Path, *, direct: bool = True) -> DigitStruct:
    """Parse an SVHN format 1 ``digitStruct.mat`` (MATLAB v7.3 = HDF5).

    The two N x 1 reference arrays are read at once; each record is then read straight from a memory
    map (:class:`attn.data.svhn.digitstruct_fast.DirectReader`) or, where that reader declines (or
    ``direct`` is false), through h5py (about 10 times slower, see docs/data.md). Both give the same result: after a direct parse, a spread
    sample of records is read again through h5py, and any difference discards the direct parse (with a
    note) for an h5py parse of the whole file, so a file the direct reader misreads costs time, never
    wrong labels.
    """
    try:
        ds, used_direct = _read_digit_struct(Path(path), direct)
        if used_direct and not _agrees_with_h5py(Path(path), ds):
            say(
                f"svhn: {path}: the fast digitStruct reader disagreed with h5py on a sample of records; "
                "parsing the whole file with h5py instead (slower)"
            )
            ds, _ = _read_digit_struct(Path(path), False)
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
        # h5py meets damage deep inside the file (object headers, heaps) with many exception types.
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: damaged HDF5 inside ({first}); fetch digitStruct.mat again") from None
    return ds


def _agrees_with_h5py(path: Path, ds: DigitStruct, samples: int = CHECK_SAMPLES) -> bool:
    """Do ``samples`` records spread over the file (first and last included) read the same via h5py?"""
    n = len(ds)
    with h5py.File(path, "r") as f:
        names, bboxes = (np.ravel(f["digitStruct"][key][()]) for key in ("name", "bbox"))
        for i in np.unique(np.linspace(0, n - 1, min(n, samples)).round().astype(int)).tolist():
            name, cols = _h5py_record(f, names[i], bboxes[i], path, i)
            want_name, rows = ds.record(i)
            if name != want_name or not np.array_equal(np.array(cols, dtype=np.float64).T.reshape(-1, 5), rows):
                return False
    return True




def _reference_arrays(f: h5py.File, path: Path) -> tuple[h5py.Dataset, h5py.Dataset]:
    """The N x 1 reference arrays digitStruct/name and digitStruct/bbox; DataError when not SVHN format 1."""
    group = f.get("digitStruct")
    arrays = []
    for key in ("name", "bbox"):
        ds = group.get(key) if isinstance(group, h5py.Group) else None
        if (
            not isinstance(ds, h5py.Dataset)
            or ds.dtype != h5py.ref_dtype
            or ds.ndim > 2
            or sum(d > 1 for d in ds.shape) > 1
        ):
            raise DataError(
                f"{path}: no N x 1 reference array 'digitStruct/{key}'; not an SVHN format 1 "
                "digitStruct.mat (expected a group 'digitStruct' with 'name' and 'bbox')"
            )
        arrays.append(ds)
    if arrays[0].size != arrays[1].size:
        raise DataError(
            f"{path}: digitStruct/name has {arrays[0].size} entries but digitStruct/bbox {arrays[1].size}; "
            "the file is damaged"
        )
    return arrays[0], arrays[1]


def _addresses(ds: h5py.Dataset) -> list[int]:
    """The object references of ``ds`` as raw addresses (what the direct reader follows)."""
    addr = np.empty(ds.shape, dtype=np.uint64)
    if ds.size:
        ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, addr, mtype=h5py.h5t.STD_REF_OBJ)
    return addr.ravel().tolist()


def _read_digit_struct(path: Path, direct: bool) -> tuple[DigitStruct, bool]:
    """The parse of :func:`read_digit_struct`; also says whether the direct reader read any record."""
    if not path.is_file():
        raise DataError(f"{path}: not found; each SVHN format 1 folder holds its PNGs and digitStruct.mat")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(
            f"{path}: not an HDF5 file ({str(exc).splitlines()[0]}); SVHN format 1 digitStruct.mat is a "
            "MATLAB v7.3 (HDF5) file (the 32x32 format 2 files such as train_32x32.mat are not supported)"
        ) from None
    with f:
        arrays = _reference_arrays(f, path)
        n = arrays[0].size
        reader = None
        if direct and n:
            from attn.data.svhn.digitstruct_fast import open_reader

            reader = open_reader(path, f.id.get_create_plist().get_userblock())
        try:
            return _records(f, path, arrays, reader)
        finally:
            if reader is not None:
                reader.close()


def _records(f: h5py.File, path: Path, arrays, reader) -> tuple[DigitStruct, bool]:
    """Every record, through ``reader`` (a direct reader, or None) where it can, else through h5py."""
    n = arrays[0].size
    raw = [_addresses(ds) for ds in arrays] if reader is not None else None
    refs: Optional[list[np.ndarray]] = None  # h5py references, made only if some record needs them
    names: list[str] = []
    columns: list[list[float]] = [[] for _ in FIELDS]
    counts = np.zeros(n, dtype=np.int64)
    used_direct = False
    for i in range(n):
        rec = None
        if reader is not None:
            rec = reader.record_or_none(raw[0][i], raw[1][i])
            used_direct = used_direct or rec is not None
        if rec is None:
            if refs is None:
                refs = [np.ravel(ds[()]) for ds in arrays]
            rec = _h5py_record(f, refs[0][i], refs[1][i], path, i)
        name, cols = rec
        k = len(cols[0])
        if any(len(c) != k for c in cols):
            raise DataError(
                f"{path}: record {i} ('{name}'): bbox fields hold different numbers of digits "
                f"({', '.join(f'{fd} {len(c)}' for fd, c in zip(FIELDS, cols))})"
            )
        names.append(name)
        counts[i] = k
        for dst, c in zip(columns, cols):
            dst.extend(c)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    boxes = np.array(columns, dtype=np.float64).T.reshape(-1, len(FIELDS))
    return DigitStruct(names=names, boxes=np.ascontiguousarray(boxes), offsets=offsets), used_direct
