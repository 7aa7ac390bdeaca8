"""SVHN format 1 (Netzer et al. 2011): house-number photos with per-digit boxes, read as digit sequences.

Source layout (``data.data_dir``; ``python run.py prepare svhn --to DIR`` makes one):

    DIR/train/  1.png .. 33402.png   digitStruct.mat
    DIR/test/   1.png .. 13068.png   digitStruct.mat
    DIR/extra/  1.png .. 202353.png  digitStruct.mat   (needed when data.use_extra is true)

Preprocessing follows Goodfellow et al. (2013): the union box of a number's digits, enlarged by 30%
(15% of its width and height on each side), clipped to the image, cropped and resized to
``image_size`` x ``image_size`` (PIL bilinear, which filters when it shrinks), grayscale or RGB.
The model sees a ``crop_size`` crop of it (random in training, the centre in evaluation; see
:meth:`attn.data.base.TaskData.model_input`).

Labels (design reference section 2.6): token 0 = end, 1-9 = digits 1-9, 10 = digit "0" (the
release's own label 10 is kept). A row holds the digits left to right, then 0, then IGNORE_INDEX.
Numbers longer than ``max_digits`` are skipped in every split and counted in the notes, never cut;
images with a negative, empty or out-of-image digit box (or a label outside 1-10) are dropped and
counted.

Ids: the 0-based position of the image in its folder's digitStruct.mat (``name[n]``, usually
``n+1.png``), plus ID_OFFSET of the folder: train n, extra 1_000_000 + n, test n.

Splits: train (+ extra when ``use_extra``) is pooled in that order (folder by folder, digitStruct
order); a permutation seeded by ``split_seed`` over all pooled records puts the first
``round(val_fraction * total)`` in validation; filtered records are then dropped from whichever split
they fell in. The split thus depends only on the seed and the folders' record counts: never on
when or how the cache was built, nor on ``max_digits``. Test = test/.

Cache: reading 235k PNGs and cropping them takes minutes, so each folder is prepared once into
``<cache_dir>/svhn-<folder>-<color><image_size>.h5`` (see :func:`ensure_cache` for the layout).
``max_digits`` is applied when loading, so changing it needs no rebuild.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import math
import mmap
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import h5py
import numpy as np
import torch
from PIL import Image

from attn.data.base import IGNORE_INDEX, DataSpec, Split, TaskData
from attn.errors import DataError

FOLDERS = ("train", "extra", "test")
ID_OFFSET = {"train": 0, "extra": 1_000_000, "test": 0}
"""Added to an image's position in its folder to form its id (extra has 202,353 < 1,000,000 images)."""
FIELDS = ("height", "label", "left", "top", "width")
"""The bbox fields of digitStruct.mat, in the column order of :attr:`DigitStruct.boxes`."""
END_TOKEN = 0
CLASS_NAMES = ("<end>", "1", "2", "3", "4", "5", "6", "7", "8", "9", "0")
EXPAND = 0.15
"""Share of the union box's width (height) added on the left and on the right (top and bottom)."""
CACHE_VERSION = 1
"""Bump when what a cache holds changes (crop rule, layout): older files are then rebuilt."""
DEFAULT_URL = "http://ufldl.stanford.edu/housenumbers/"
PREPARE_HINT = "prepare it with `python run.py prepare svhn --to DIR`"

Progress = Callable[[int, int], None]
"""progress(done, total): called after each committed chunk of a cache build."""


def _note(notes: Optional[list[str]], line: str) -> None:
    """Report a data event now (stderr: the build can take minutes) and keep it for the run log."""
    print(line, file=sys.stderr, flush=True)
    if notes is not None:
        notes.append(line)


# ---------------------------------------------------------------------------------------------
# digitStruct.mat
# ---------------------------------------------------------------------------------------------
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


class _Unsupported(Exception):
    """The direct reader met something it does not parse; that record is read through h5py instead."""


_UNDEF = 0xFFFFFFFFFFFFFFFF
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_H = struct.Struct("<H")
_I = struct.Struct("<I")
_MSG = struct.Struct("<HHB")


class _DirectReader:
    """Reads MATLAB's small HDF5 objects straight from a memory map of the file.

    Opening an object through the HDF5 library costs ~40 us, and a record of digitStruct.mat is ~18
    objects (name, bbox group, 5 fields, 5 scalars per digit), so h5py needs ~0.7 ms a record, i.e.
    minutes for extra/. MATLAB v7.3 writes the oldest file format, so this reader handles just that:
    version-1 object headers (with continuation blocks), dataspace, datatype (integer, float, object
    reference), compact and contiguous layouts, and groups held as symbol tables (v1 B-tree, local
    heap) or link messages. Anything else (chunked or filtered data, shared messages, v2 headers,
    dense link storage) raises :class:`_Unsupported`, and the caller reads that record with h5py.
    Object references in such files are the object header's address relative to the superblock.
    """

    def __init__(self, buf: mmap.mmap, base: int) -> None:
        self.b = buf
        self.base = base

    @classmethod
    def open(cls, fh, userblock: int) -> "_DirectReader":
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            sb = userblock
            if buf[sb : sb + 8] != b"\x89HDF\r\n\x1a\n":
                raise _Unsupported("no superblock after the userblock")
            version = buf[sb + 8]
            if version in (0, 1):
                size_off, size_len = buf[sb + 13], buf[sb + 14]
                base = _Q.unpack_from(buf, sb + (24 if version == 0 else 28))[0]
            elif version in (2, 3):
                size_off, size_len = buf[sb + 9], buf[sb + 10]
                base = _Q.unpack_from(buf, sb + 12)[0]
            else:
                raise _Unsupported(f"superblock version {version}")
            if size_off != 8 or size_len != 8:
                raise _Unsupported("addresses or lengths not 8 bytes wide")
        except BaseException:
            buf.close()
            raise
        return cls(buf, base)

    def close(self) -> None:
        self.b.close()

    def messages(self, addr: int) -> list[tuple[int, int, int, int]]:
        """(type, data offset, size, flags) of each message in the object header at ``addr``."""
        b, off = self.b, self.base + addr
        if b[off] != 1:
            raise _Unsupported("object header version is not 1")
        blocks = [(off + 16, _I.unpack_from(b, off + 8)[0])]
        out = []
        for p, n in blocks:  # continuation messages append to ``blocks`` while we iterate
            end = p + n
            while p + 8 <= end:
                mtype, msize, mflags = _MSG.unpack_from(b, p)
                if mtype == 0x10:
                    if len(blocks) > 64:
                        raise _Unsupported("too many continuation blocks")
                    caddr, clen = _QQ.unpack_from(b, p + 8)
                    blocks.append((self.base + caddr, clen))
                elif mtype:
                    out.append((mtype, p + 8, msize, mflags))
                p += 8 + msize
        return out

    def dataset(self, addr: int) -> tuple[tuple, str]:
        """(flat values, kind) of the dataset at ``addr``: kind 'u'/'i' integers, 'f' floats, 'r' object
        references (as addresses). Values come back as a Python tuple: these objects hold 1-40 values,
        where numpy's per-call overhead would dominate."""
        b = self.b
        count = fmt = layout = None
        for mtype, p, _, flags in self.messages(addr):
            if mtype == 1:  # dataspace
                version, nd = b[p], b[p + 1]
                if version == 1:
                    count = math.prod(struct.unpack_from(f"<{nd}Q", b, p + 8))
                elif version == 2 and b[p + 3] != 2:
                    count = math.prod(struct.unpack_from(f"<{nd}Q", b, p + 4)) if b[p + 3] == 1 else 1
                else:
                    raise _Unsupported("dataspace version or null dataspace")
            elif mtype == 3:  # datatype
                if flags & 2:
                    raise _Unsupported("shared datatype")
                key = b[p : p + 8]
                fmt = _FORMATS.get(key) or _format(key)
            elif mtype == 8:
                layout = p
            elif mtype == 0xB:
                raise _Unsupported("filtered data")
        if count is None or fmt is None or layout is None:
            raise _Unsupported("not a dataset")
        order, code, size, kind = fmt
        nbytes = count * size
        version = b[layout]
        if version in (3, 4):
            cls = b[layout + 1]
            if cls == 0:
                start, stored = layout + 4, _H.unpack_from(b, layout + 2)[0]
            elif cls == 1:
                data_addr, stored = _QQ.unpack_from(b, layout + 2)
                if data_addr == _UNDEF:
                    raise _Unsupported("data never written")
                start = self.base + data_addr
            else:
                raise _Unsupported("chunked or virtual layout")
        elif version in (1, 2):
            nd, cls = b[layout + 1], b[layout + 2]
            q = layout + 8
            if cls == 1:
                start = self.base + _Q.unpack_from(b, q)[0]
                q += 8
            q += 4 * nd
            if cls == 0:
                stored, start = _I.unpack_from(b, q)[0], q + 4
            elif cls == 1:
                stored = nbytes
            else:
                raise _Unsupported("chunked layout")
        else:
            raise _Unsupported(f"layout version {version}")
        if stored < nbytes or start + nbytes > len(b):
            raise _Unsupported("data shorter than its dataspace")
        unpack = _UNPACK.get((order, count, code))
        if unpack is None:
            unpack = _UNPACK.setdefault((order, count, code), struct.Struct(f"{order}{count}{code}").unpack_from)
        return unpack(b, start), kind

    def members(self, addr: int) -> dict[str, int]:
        """name -> object address of the members of the group at ``addr``."""
        b = self.b
        out: dict[str, int] = {}
        for mtype, p, _, _ in self.messages(addr):
            if mtype == 0x11:  # symbol table: v1 B-tree of symbol-table nodes + local heap of names
                btree, heap = _QQ.unpack_from(b, p)
                h = self.base + heap
                if b[h : h + 4] != b"HEAP":
                    raise _Unsupported("bad local heap")
                names_at = self.base + _Q.unpack_from(b, h + 24)[0]
                self._btree(btree, names_at, out)
            elif mtype == 6:  # link message (compact new-style group)
                flags = b[p + 1]
                q = p + 2
                if flags & 0x8:
                    if b[q] != 0:
                        raise _Unsupported("soft or external link")
                    q += 1
                if flags & 0x4:
                    q += 8
                if flags & 0x10:
                    q += 1
                width = 1 << (flags & 3)
                n = int.from_bytes(b[q : q + width], "little")
                q += width
                out[b[q : q + n].decode("utf-8")] = _Q.unpack_from(b, q + n)[0]
            elif mtype == 2 and _Q.unpack_from(b, p + 2 + (8 if b[p + 1] & 1 else 0))[0] != _UNDEF:
                raise _Unsupported("dense link storage")
        return out

    def _btree(self, addr: int, names_at: int, out: dict[str, int], depth: int = 0) -> None:
        b, off = self.b, self.base + addr
        if b[off : off + 4] != b"TREE" or b[off + 4] != 0 or depth > 16:
            raise _Unsupported("bad group B-tree")
        level, used = b[off + 5], _H.unpack_from(b, off + 6)[0]
        for i in range(used):
            child = _Q.unpack_from(b, off + 24 + 8 + 16 * i)[0]
            if level:
                self._btree(child, names_at, out, depth + 1)
                continue
            s = self.base + child
            if b[s : s + 4] != b"SNOD":
                raise _Unsupported("bad symbol table node")
            for j in range(_H.unpack_from(b, s + 6)[0]):
                name_off, obj = _QQ.unpack_from(b, s + 8 + 40 * j)
                start = names_at + name_off
                end = b.find(b"\x00", start)
                if end < 0:
                    raise _Unsupported("unterminated link name")
                out[b[start:end].decode("utf-8")] = obj

    def record(self, name_addr: int, bbox_addr: int) -> tuple[str, list[list[float]]]:
        """(file name, [values of height, label, left, top, width]) of one record."""
        chars, kind = self.dataset(name_addr)
        if kind not in "ui":
            raise _Unsupported("name is not a char array")
        name = "".join(map(chr, chars))
        members = self.members(bbox_addr)
        columns = []
        for field in FIELDS:
            values, kind = self.dataset(members[field])  # KeyError: missing field -> h5py names it
            if kind == "r":
                column = []
                for ref in values:
                    v, k = self.dataset(ref)
                    if k != "f" or len(v) != 1:
                        raise _Unsupported("referenced value is not one number")
                    column.append(v[0])
            elif kind == "f":
                column = list(values)
            else:
                raise _Unsupported("field is neither numbers nor references")
            columns.append(column)
        return name, columns


_FORMATS: dict[bytes, tuple[str, str, int, str]] = {}
_UNPACK: dict[tuple[str, int, str], Callable] = {}


def _format(key: bytes) -> tuple[str, str, int, str]:
    """Datatype message (first 8 bytes) -> (struct byte order, struct code, size, kind); memoised."""
    cls, bits, size = key[0] & 0x0F, key[1], _I.unpack_from(key, 4)[0]
    order = ">" if bits & 1 else "<"
    if cls == 0 and size in (1, 2, 4, 8):
        code = {1: "b", 2: "h", 4: "i", 8: "q"}[size]
        fmt = (order, code if bits & 8 else code.upper(), size, "i" if bits & 8 else "u")
    elif cls == 1 and size in (4, 8):
        fmt = (order, "f" if size == 4 else "d", size, "f")
    elif cls == 7 and (bits & 0x0F) == 0 and size == 8:
        fmt = ("<", "Q", 8, "r")
    else:
        raise _Unsupported(f"datatype class {cls} size {size}")
    _FORMATS[key] = fmt
    return fmt


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
    map (:class:`_DirectReader`, ~0.1 ms a record) or, where that reader declines (or ``direct`` is
    false), through h5py (~0.7 ms a record). Both give the same result: after a direct parse, a spread
    sample of records is read again through h5py, and any difference discards the direct parse (with a
    note) for an h5py parse of the whole file, so a file the direct reader misreads costs time, never
    wrong labels.
    """
    try:
        ds, used_direct = _read_digit_struct(Path(path), direct)
        if used_direct and not _agrees_with_h5py(Path(path), ds):
            print(
                f"svhn: {path}: the fast digitStruct reader disagreed with h5py on a sample of records; "
                "parsing the whole file with h5py instead (slower)",
                file=sys.stderr,
                flush=True,
            )
            ds, _ = _read_digit_struct(Path(path), False)
    except DataError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
        # h5py meets damage deep inside the file (object headers, heaps) with many exception types.
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: damaged HDF5 inside ({first}); fetch digitStruct.mat again") from None
    return ds


def _agrees_with_h5py(path: Path, ds: DigitStruct, samples: int = 64) -> bool:
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
        n = arrays[0].size
        raw = []
        for ds in arrays:
            addr = np.empty(ds.shape, dtype=np.uint64)
            if n:
                ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, addr, mtype=h5py.h5t.STD_REF_OBJ)
            raw.append(addr.ravel().tolist())
        refs: Optional[list[np.ndarray]] = None  # h5py references, made only if some record needs them

        reader = None
        if direct and n:
            fh = open(path, "rb")
            try:
                reader = _DirectReader.open(fh, f.id.get_create_plist().get_userblock())
            except (_Unsupported, ValueError, OSError, struct.error, IndexError, OverflowError):
                reader = None
            finally:
                fh.close()  # the map keeps its own handle
        names: list[str] = []
        columns: list[list[float]] = [[] for _ in FIELDS]
        counts = np.zeros(n, dtype=np.int64)
        used_direct = False
        try:
            for i in range(n):
                rec = None
                if reader is not None:
                    try:
                        rec = reader.record(raw[0][i], raw[1][i])
                        used_direct = True
                    except (_Unsupported, KeyError, ValueError, struct.error, IndexError, OverflowError, UnicodeDecodeError):
                        rec = None
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
        finally:
            if reader is not None:
                reader.close()
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    boxes = np.array(columns, dtype=np.float64).T.reshape(-1, len(FIELDS))
    return DigitStruct(names=names, boxes=np.ascontiguousarray(boxes), offsets=offsets), used_direct


# ---------------------------------------------------------------------------------------------
# crops and labels
# ---------------------------------------------------------------------------------------------
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


def encode_number(labels: Sequence[int], max_digits: int) -> Optional[np.ndarray]:
    """Release labels of one number (1-9, 10 = digit 0) -> int64 (max_digits + 1,) tokens: the digits,
    END_TOKEN, then IGNORE_INDEX. None when the number has more than ``max_digits`` digits (skipped,
    never cut)."""
    if len(labels) > max_digits:
        return None
    out = np.full(max_digits + 1, IGNORE_INDEX, dtype=np.int64)
    out[: len(labels)] = labels
    out[len(labels)] = END_TOKEN
    return out


def decode_tokens(tokens: Sequence[int]) -> str:
    """Tokens -> the number as text, up to the first end token ("<end>" and padding dropped; 10 -> "0")."""
    out = []
    for t in tokens:
        t = int(t)
        if t == END_TOKEN or t == IGNORE_INDEX:
            break
        out.append(CLASS_NAMES[t])
    return "".join(out)


def _label_matrix(offsets: np.ndarray, digit_labels: np.ndarray, rows: np.ndarray, max_digits: int) -> np.ndarray:
    """Tokens (len(rows), max_digits + 1) of the records ``rows`` (all at most max_digits long)."""
    k = offsets[rows + 1] - offsets[rows]
    out = np.full((len(rows), max_digits + 1), IGNORE_INDEX, dtype=np.int64)
    out[np.arange(len(rows)), k] = END_TOKEN
    r = np.repeat(np.arange(len(rows)), k)
    j = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
    src = np.repeat(offsets[rows], k) + j
    out[r, j] = np.rint(digit_labels[src]).astype(np.int64)
    return out


# ---------------------------------------------------------------------------------------------
# cache
# ---------------------------------------------------------------------------------------------
def cache_path(cache_dir: str | Path, folder: str, image_size: int = 64, color: str = "gray") -> Path:
    """Where the cache of one source folder built with these options lives."""
    return Path(cache_dir) / f"svhn-{folder}-{color}{image_size}.h5"


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``target``'s build: ranks of one run on one machine build it once."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS: no concurrent builds expected
        yield
        return
    try:
        fh = open(target.with_name(f".{target.name}.lock"), "a+")
    except OSError:  # a read-only cache folder: nothing can be built there anyway, reading needs no lock
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"svhn: waiting for another process building {target}", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _png_names(folder_dir: Path) -> set[str]:
    try:
        return {e.name for e in os.scandir(folder_dir) if e.name.lower().endswith(".png")}
    except OSError as exc:
        raise DataError(f"{folder_dir}: cannot list the folder ({exc.strerror})") from None


def _source_attrs(mat: Path, ds: Optional[DigitStruct], num_png: int) -> dict:
    st = mat.stat()
    out = {"source_mat_size": st.st_size, "source_mat_mtime_ns": st.st_mtime_ns, "source_num_png": num_png}
    if ds is not None:
        out.update(source_records_sha256=ds.digest(), num_records=len(ds))
    return out


def _option_attrs(folder: str, image_size: int, color: str) -> dict:
    return {
        "format": "attn-svhn-cache",
        "version": CACHE_VERSION,
        "folder": folder,
        "image_size": image_size,
        "color": color,
        "channels": 1 if color == "gray" else 3,
        "expand": EXPAND,
    }


def _same(attrs, wanted: dict) -> list[str]:
    """Keys of ``wanted`` whose value differs in ``attrs``."""
    out = []
    for key, value in wanted.items():
        have = attrs.get(key)
        if isinstance(have, bytes):
            have = have.decode()
        if isinstance(have, np.generic):
            have = have.item()
        if have != value:
            out.append(key)
    return out


def _check_cache(path: Path, options: dict, mat: Path, num_png: int) -> tuple[str, str]:
    """Verdict on a finished cache file: ("ok" | "stat" | "rebuild", why). "stat": only the
    digitStruct.mat size or mtime changed, so its parsed content decides."""
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            n = int(a["num_records"])
            C, S = options["channels"], options["image_size"]
            shapes = {
                "images": (n, C, S, S),
                "status": (n,),
                "offsets": (n + 1,),
                "names": (n,),
                "crop_box": (n, 4),
                "source_size": (n, 2),
            }
            for key, shape in shapes.items():
                if key not in f or f[key].shape != shape:
                    raise KeyError(f"dataset '{key}' missing or not {shape}")
            if f["boxes"].shape[1:] != (5,) or not int(a["complete"]):
                raise KeyError("incomplete")
            changed = _same(a, options)
            if changed:
                why = f"svhn: cache {path} was built with other options ({', '.join(changed)}); rebuilding it"
                return "rebuild", why
            if int(a["source_num_png"]) != num_png:
                return "rebuild", (
                    f"svhn: {mat.parent} now holds {num_png} PNGs, the cache {path} was built from "
                    f"{int(a['source_num_png'])}; rebuilding it"
                )
            st = mat.stat()
            if int(a["source_mat_size"]) != st.st_size or int(a["source_mat_mtime_ns"]) != st.st_mtime_ns:
                return "stat", str(a["source_records_sha256"])
            return "ok", ""
    except Exception as exc:  # noqa: BLE001 - any failure to read it means: build it again
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return "rebuild", f"svhn: cache {path} is unreadable ({reason}); rebuilding it"


def ensure_cache(
    folder_dir: str | Path,
    cache_dir: str | Path,
    *,
    image_size: int = 64,
    color: str = "gray",
    notes: Optional[list[str]] = None,
    progress: Optional[Progress] = None,
    chunk_rows: int = 1024,
    workers: Optional[int] = None,
) -> Path:
    """Return the cache of one source folder (train/, extra/ or test/), building it when missing,
    built with other options, damaged or older than its source; resume a build that was interrupted.

    Cache file ``<cache_dir>/svhn-<folder>-<color><image_size>.h5``, one row per digitStruct record
    (row n = record n = image ``names[n]``, bad records included, so a row's id is its position):

        images       uint8 (N, C, S, S)  the resized crops (zeros for bad records)
        status       uint8 (N,)          0 = usable, 1 = bad box (see :func:`crop_box`)
        names        bytes (N,)          PNG file names
        offsets      int64 (N + 1,)      record n's digits are boxes[offsets[n]:offsets[n + 1]]
        boxes        float64 (D, 5)      digit rows (height, label, left, top, width) as in digitStruct
        crop_box     float32 (N, 4)      the crop (x0, y0, x1, y1) taken from the source image
        source_size  int32 (N, 2)        source image (width, height)
        attrs: format, version, folder, image_size, color, channels, expand (the build options);
               source_mat_size, source_mat_mtime_ns, source_records_sha256, source_num_png,
               num_records (what it was built from); rows_done, complete (build progress).

    A build writes ``<name>.partial`` in chunks of ``chunk_rows`` rows, recording ``rows_done`` after
    each, and renames it to the final name only when complete: an interrupted build (Ctrl-C, a crash)
    never reads as a finished cache, and the next call continues at ``rows_done`` if the source and
    options are unchanged. ``progress(done, total)`` is called after each committed chunk.
    """
    folder_dir = Path(folder_dir)
    folder = folder_dir.name
    if color not in ("gray", "rgb"):
        raise ValueError(f"color must be 'gray' or 'rgb', not {color!r}")
    mat = folder_dir / "digitStruct.mat"
    if not folder_dir.is_dir():
        raise DataError(
            f"{folder_dir}: folder not found; an SVHN format 1 root holds train/, test/ and extra/; {PREPARE_HINT}"
        )
    if not mat.is_file():
        raise DataError(
            f"{mat}: not found; each SVHN format 1 folder holds its PNGs and digitStruct.mat; {PREPARE_HINT}"
        )
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{cache_dir}: cannot create the SVHN cache folder ({exc.strerror}); set data.cache_dir to a "
            "writable folder"
        ) from None
    final = cache_path(cache_dir, folder, image_size, color)
    options = _option_attrs(folder, image_size, color)
    with _locked(final):
        pngs = _png_names(folder_dir)
        ds = None
        if final.exists():
            verdict, why = _check_cache(final, options, mat, len(pngs))
            if verdict == "ok":
                return final
            if verdict == "stat":
                ds = read_digit_struct(mat)
                if ds.digest() == why:
                    # Same records (e.g. the folder was copied): adopt the new size/mtime, keep the cache.
                    with contextlib.suppress(OSError):  # read-only: parse again next time, still correct
                        with h5py.File(final, "r+") as f:
                            f.attrs.update(_source_attrs(mat, None, len(pngs)))
                    return final
                why = f"svhn: {mat} changed since the cache {final} was built; rebuilding it"
            _note(notes, why)
            final.unlink()
        if ds is None:
            ds = read_digit_struct(mat)
        missing = [name for name in ds.names if name not in pngs]
        if missing:
            raise DataError(
                f"{folder_dir}: {len(missing)} of {len(ds)} PNGs named in digitStruct.mat are missing, first "
                f"'{missing[0]}'; the folder is incomplete: extract it again ({PREPARE_HINT})"
            )
        _build(folder_dir, ds, final, options, _source_attrs(mat, ds, len(pngs)), notes, progress, chunk_rows, workers)
    return final


def _open_partial(partial: Path, options: dict, source: dict, notes: Optional[list[str]]) -> Optional[h5py.File]:
    """The interrupted build at ``partial`` if it was made from the same source with the same options."""
    if not partial.exists():
        return None
    try:
        f = h5py.File(partial, "r+")
    except Exception as exc:  # noqa: BLE001
        _note(notes, f"svhn: unfinished cache {partial} is unreadable ({str(exc).splitlines()[0]}); starting over")
        partial.unlink()
        return None
    if _same(f.attrs, options) or _same(f.attrs, source) or "rows_done" not in f.attrs:
        f.close()
        _note(notes, f"svhn: unfinished cache {partial} came from another source or options; starting over")
        partial.unlink()
        return None
    return f


def _process_row(folder_dir: Path, name: str, boxes: np.ndarray, size: int, color: str):
    """One record -> (crop (C, S, S) or None for a bad box, crop box, (width, height))."""
    path = folder_dir / name
    try:
        with Image.open(path) as im:
            im.load()
            w, h = im.size
            box = crop_box(boxes, w, h)
            if box is None:
                return None, (0.0, 0.0, 0.0, 0.0), (w, h)
            return crop_image(im, box, size, color), box, (w, h)
    except FileNotFoundError:
        raise DataError(
            f"{path}: PNG named in digitStruct.mat is missing; extract the folder again ({PREPARE_HINT})"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the PNG ({exc}); the file is damaged: extract the folder again") from None


class _Reporter:
    """Build progress on stderr: a tqdm bar on a terminal, a line every ~10% (and per minute) in logs."""

    def __init__(self, label: str, start: int, total: int) -> None:
        self.total, self.label = total, label
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=label, unit="img", file=sys.stderr, leave=False)
        self.last_line, self.last_pct = time.monotonic(), -10

    def update(self, done: int, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step)
            return
        pct = 100 * done // max(1, self.total)
        if pct >= self.last_pct + 10 or time.monotonic() - self.last_line > 60:
            print(f"{self.label}: {done}/{self.total} ({pct}%)", file=sys.stderr, flush=True)
            self.last_line, self.last_pct = time.monotonic(), pct

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _build(
    folder_dir: Path,
    ds: DigitStruct,
    final: Path,
    options: dict,
    source: dict,
    notes: Optional[list[str]],
    progress: Optional[Progress],
    chunk_rows: int,
    workers: Optional[int],
) -> None:
    n, S, C = len(ds), options["image_size"], options["channels"]
    partial = final.with_name(final.name + ".partial")
    f = _open_partial(partial, options, source, notes)
    if f is None:
        f = h5py.File(partial, "w")
        try:
            f.create_dataset("images", (n, C, S, S), np.uint8, chunks=(min(n, 128), C, S, S) if n else None)
            f.create_dataset("status", (n,), np.uint8)
            f.create_dataset("crop_box", (n, 4), np.float32)
            f.create_dataset("source_size", (n, 2), np.int32)
            encoded = [s.encode("utf-8") for s in ds.names]
            f.create_dataset("names", data=np.array(encoded, dtype=f"S{max(map(len, encoded), default=1)}"))
            f.create_dataset("offsets", data=ds.offsets)
            f.create_dataset("boxes", data=ds.boxes)
            f.attrs.update(options)
            f.attrs.update(source)
            f.attrs.update(rows_done=0, complete=0, source_dir=str(folder_dir))
            f.flush()
        except BaseException:
            f.close()
            partial.unlink()
            raise
    start = int(f.attrs["rows_done"])
    verb = "resuming" if start else "building"
    print(
        f"svhn: {verb} cache {final} from {n} images in {folder_dir}"
        + (f" at {start}" if start else "")
        + " (interrupted builds resume)",
        file=sys.stderr,
        flush=True,
    )
    if start and notes is not None:
        notes.append(f"svhn: resumed the cache build of {final} at {start} of {n} images")
    t0 = time.monotonic()
    workers = workers or min(8, os.cpu_count() or 1)
    # PIL decodes and resamples with the GIL released, so threads overlap the PNG work.
    pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None
    report = _Reporter(f"svhn {folder_dir.name} cache", start, n)
    def job(i: int):
        name, boxes = ds.record(i)
        return _process_row(folder_dir, name, boxes, S, options["color"])

    try:
        for a in range(start, n, chunk_rows):
            b = min(n, a + chunk_rows)
            results = list(pool.map(job, range(a, b)) if pool is not None else map(job, range(a, b)))
            images = np.zeros((b - a, C, S, S), dtype=np.uint8)
            status = np.zeros(b - a, dtype=np.uint8)
            for j, (img, _, _) in enumerate(results):
                if img is None:
                    status[j] = 1
                else:
                    images[j] = img
            f["images"][a:b] = images
            f["status"][a:b] = status
            f["crop_box"][a:b] = np.array([r[1] for r in results], dtype=np.float32)
            f["source_size"][a:b] = np.array([r[2] for r in results], dtype=np.int32)
            f.flush()
            # Progress is recorded only once the chunk's rows are on disk.
            f.attrs["rows_done"] = b
            f.flush()
            report.update(b, b - a)
            if progress is not None:
                progress(b, n)
        f.attrs["complete"] = 1
    finally:
        report.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        f.close()
    os.replace(partial, final)
    print(f"svhn: built {final} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


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


def _root(cfg) -> Path:
    if not cfg.data_dir:
        raise DataError(
            "data.data_dir must point at SVHN format 1 (a folder with train/, test/ and extra/ holding the "
            f"PNGs and digitStruct.mat); {PREPARE_HINT}"
        )
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{root}: data.data_dir does not exist; point it at SVHN format 1 (train/, test/, extra/); {PREPARE_HINT}"
        )
    for folder in ("train", "test") + (("extra",) if cfg.use_extra else ()):
        d = root / folder
        if d.is_dir():
            continue
        if folder == "extra":
            raise DataError(
                f"{d}: not found but data.use_extra=true; add the extra/ folder of SVHN format 1 or set "
                "data.use_extra=false"
            )
        raise DataError(
            f"{d}: folder not found; data.data_dir must hold SVHN format 1 train/ and test/ (and extra/); "
            f"{PREPARE_HINT}"
        )
    return root


def _caches(cfg, notes: Optional[list[str]] = None) -> dict[str, Path]:
    """The cache file of every folder the config reads, built where missing or stale."""
    root = _root(cfg)
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


def load_svhn(cfg) -> TaskData:
    """Load SVHN format 1 as digit sequences for DRAM; ``cfg`` is a :class:`attn.config.DataConfig`.

    Splits hold the stored ``image_size`` crops: images uint8 (N, C, S, S), labels int64
    (N, max_digits + 1), ids int64 (N,) (see the module docstring); the model gets ``crop_size`` crops.
    """
    notes: list[str] = []
    pooled = ["train"] + (["extra"] if cfg.use_extra else [])
    index = {folder: _read_index(path, folder) for folder, path in _caches(cfg, notes).items()}

    md = cfg.max_digits
    keep = {}
    for name, fo in index.items():
        ndig = np.diff(fo.offsets)
        bad = fo.status != 0
        long = ~bad & (ndig > md)
        if bad.any():
            notes.append(
                f"svhn: dropped {int(bad.sum())} of {fo.n} {name} images with a negative, empty or out-of-image "
                "digit box"
            )
        if long.any():
            notes.append(f"svhn: skipped {int(long.sum())} of {fo.n} {name} images with more than {md} digits")
        keep[name] = ~bad & ~long

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

    C = 1 if cfg.color == "gray" else 3
    S = cfg.image_size

    def make(parts: list[tuple[_Folder, np.ndarray]]) -> Split:
        n = sum(len(r) for _, r in parts)
        images = np.empty((n, C, S, S), dtype=np.uint8)
        labels, ids, boxes, at = [], [], [], 0
        for fo, r in parts:
            at = _fill(images, at, fo.path, r)
            labels.append(_label_matrix(fo.offsets, fo.digit_labels, r, md))
            ids.append(r.astype(np.int64) + ID_OFFSET[fo.folder])
            boxes.append(fo.number_boxes[r])
        return Split(
            images=torch.from_numpy(images),
            labels=torch.from_numpy(np.concatenate(labels) if labels else np.zeros((0, md + 1), np.int64)),
            ids=torch.from_numpy(np.concatenate(ids) if ids else np.zeros(0, np.int64)),
            boxes=torch.from_numpy(np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)),
        )

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
    return TaskData(
        spec=spec,
        train=make(rows["train"]),
        val=make(rows["val"]),
        test=make(rows["test"]),
        mean=cfg.mean,
        std=cfg.std,
        crop=None if canvas is not None else cfg.crop_size,
        canvas=canvas,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# prepare: download, verify, extract, build the cache
# ---------------------------------------------------------------------------------------------
def prepare_svhn(
    dest: str | Path,
    *,
    base_url: str = DEFAULT_URL,
    extra: bool = True,
    keep_archives: bool = False,
    timeout: float = 60.0,
) -> dict[str, int]:
    """Make ``dest`` an SVHN format 1 root: download ``<base_url>/{train,test,extra}.tar.gz``,
    extract them safely into ``dest/train`` etc., and build the caches with the default options
    (``data.image_size``, ``data.color``) in ``dest/attn-cache``. Returns the image count per folder.

    A folder already holding digitStruct.mat is left alone (nothing is downloaded for it); an archive
    already in ``dest`` is used as is; an interrupted download continues from its ``.part`` file.
    Archives are deleted after extraction unless ``keep_archives``.
    """
    from urllib.parse import urljoin

    from attn.config import SvhnData
    from attn.data.download import download, extract_tar

    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{dest}: cannot create the folder ({exc.strerror}); choose another --to") from None
    folders = ["train", "test"] + (["extra"] if extra else [])
    base = base_url if base_url.endswith("/") else base_url + "/"
    for folder in folders:
        target = dest / folder
        if (target / "digitStruct.mat").is_file():
            print(f"svhn: {target} is there already; not downloading it", file=sys.stderr, flush=True)
            continue
        if target.exists():
            raise DataError(f"{target}: exists but holds no digitStruct.mat; move it away and run the command again")
        archive = dest / f"{folder}.tar.gz"
        url = urljoin(base, f"{folder}.tar.gz")
        if archive.is_file():
            print(f"svhn: using {archive}", file=sys.stderr, flush=True)
        else:
            print(f"svhn: downloading {url}", file=sys.stderr, flush=True)
            download(url, archive, timeout=timeout)
        extract_tar(archive, dest, folder, require=("digitStruct.mat",), delete_bad=True)
        if not keep_archives:
            archive.unlink()
    fields = SvhnData.model_fields
    size, color = fields["image_size"].default, fields["color"].default
    counts = {}
    for folder in folders:
        path = ensure_cache(dest / folder, dest / "attn-cache", image_size=size, color=color)
        with h5py.File(path, "r") as f:
            counts[folder] = int(f.attrs["num_records"])
    return counts
