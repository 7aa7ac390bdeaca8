"""A fast reader of digitStruct.mat's small HDF5 objects, straight from a memory map of the file.

It stands behind the h5py reader of :mod:`attn.data.svhn.digitstruct`, which calls it for each record
and reads the record itself wherever this reader declines (:data:`DECLINED`), and which checks a
spread sample of its records against h5py on every parse. Why it exists (it saves about a fifth of
``run.py prepare svhn``): docs/data.md, "Why the direct digitStruct reader".

Opening an object through the HDF5 library costs ~40 us, and a record of digitStruct.mat is ~18
objects (name, bbox group, 5 fields, 5 scalars per digit). MATLAB v7.3 writes the oldest HDF5 file
format, so this reader handles just that: version-1 object headers (with continuation blocks),
dataspace, datatype (integer, float, object reference), compact and contiguous layouts, and groups
held as symbol tables (v1 B-tree, local heap) or link messages. Anything else (chunked or filtered
data, shared messages, v2 headers, dense link storage) raises :class:`Unsupported`. Object
references in such files are the object header's address relative to the superblock.
"""

from __future__ import annotations

import math
import mmap
import struct
from typing import Callable, Optional

from attn.data.svhn.digitstruct import FIELDS


class Unsupported(Exception):
    """The direct reader met something it does not parse; that record is read through h5py instead."""


DECLINED = (Unsupported, KeyError, ValueError, struct.error, IndexError, OverflowError, UnicodeDecodeError)
"""What :meth:`DirectReader.record` raises on an object it cannot read: the caller uses h5py then."""

_UNDEF = 0xFFFFFFFFFFFFFFFF
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_H = struct.Struct("<H")
_I = struct.Struct("<I")
_MSG = struct.Struct("<HHB")

class DirectReader:
    """Reads MATLAB's small HDF5 objects straight from a memory map of the file.

    Opening an object through the HDF5 library costs ~40 us, and a record of digitStruct.mat is ~18
    objects (name, bbox group, 5 fields, 5 scalars per digit), so h5py needs ~0.7 ms a record, i.e.
    minutes for extra/. MATLAB v7.3 writes the oldest file format, so this reader handles just that:
    version-1 object headers (with continuation blocks), dataspace, datatype (integer, float, object
    reference), compact and contiguous layouts, and groups held as symbol tables (v1 B-tree, local
    heap) or link messages. Anything else (chunked or filtered data, shared messages, v2 headers,
    dense link storage) raises :class:`Unsupported`, and the caller reads that record with h5py.
    Object references in such files are the object header's address relative to the superblock.
    """

    def __init__(self, buf: mmap.mmap, base: int) -> None:
        self.b = buf
        self.base = base

    @classmethod
    def open(cls, fh, userblock: int) -> "DirectReader":
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            sb = userblock
            if buf[sb : sb + 8] != b"\x89HDF\r\n\x1a\n":
                raise Unsupported("no superblock after the userblock")
            version = buf[sb + 8]
            if version in (0, 1):
                size_off, size_len = buf[sb + 13], buf[sb + 14]
                base = _Q.unpack_from(buf, sb + (24 if version == 0 else 28))[0]
            elif version in (2, 3):
                size_off, size_len = buf[sb + 9], buf[sb + 10]
                base = _Q.unpack_from(buf, sb + 12)[0]
            else:
                raise Unsupported(f"superblock version {version}")
            if size_off != 8 or size_len != 8:
                raise Unsupported("addresses or lengths not 8 bytes wide")
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
            raise Unsupported("object header version is not 1")
        blocks = [(off + 16, _I.unpack_from(b, off + 8)[0])]
        out = []
        for p, n in blocks:  # continuation messages append to ``blocks`` while we iterate
            end = p + n
            while p + 8 <= end:
                mtype, msize, mflags = _MSG.unpack_from(b, p)
                if mtype == 0x10:
                    if len(blocks) > 64:
                        raise Unsupported("too many continuation blocks")
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
                    raise Unsupported("dataspace version or null dataspace")
            elif mtype == 3:  # datatype
                if flags & 2:
                    raise Unsupported("shared datatype")
                key = b[p : p + 8]
                fmt = _FORMATS.get(key) or _format(key)
            elif mtype == 8:
                layout = p
            elif mtype == 0xB:
                raise Unsupported("filtered data")
        if count is None or fmt is None or layout is None:
            raise Unsupported("not a dataset")
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
                    raise Unsupported("data never written")
                start = self.base + data_addr
            else:
                raise Unsupported("chunked or virtual layout")
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
                raise Unsupported("chunked layout")
        else:
            raise Unsupported(f"layout version {version}")
        if stored < nbytes or start + nbytes > len(b):
            raise Unsupported("data shorter than its dataspace")
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
                    raise Unsupported("bad local heap")
                names_at = self.base + _Q.unpack_from(b, h + 24)[0]
                self._btree(btree, names_at, out)
            elif mtype == 6:  # link message (compact new-style group)
                flags = b[p + 1]
                q = p + 2
                if flags & 0x8:
                    if b[q] != 0:
                        raise Unsupported("soft or external link")
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
                raise Unsupported("dense link storage")
        return out

    def _btree(self, addr: int, names_at: int, out: dict[str, int], depth: int = 0) -> None:
        b, off = self.b, self.base + addr
        if b[off : off + 4] != b"TREE" or b[off + 4] != 0 or depth > 16:
            raise Unsupported("bad group B-tree")
        level, used = b[off + 5], _H.unpack_from(b, off + 6)[0]
        for i in range(used):
            child = _Q.unpack_from(b, off + 24 + 8 + 16 * i)[0]
            if level:
                self._btree(child, names_at, out, depth + 1)
                continue
            s = self.base + child
            if b[s : s + 4] != b"SNOD":
                raise Unsupported("bad symbol table node")
            for j in range(_H.unpack_from(b, s + 6)[0]):
                name_off, obj = _QQ.unpack_from(b, s + 8 + 40 * j)
                start = names_at + name_off
                end = b.find(b"\x00", start)
                if end < 0:
                    raise Unsupported("unterminated link name")
                out[b[start:end].decode("utf-8")] = obj

    def record_or_none(self, name_addr: int, bbox_addr: int) -> Optional[tuple[str, list[list[float]]]]:
        """:meth:`record`, or None where this reader declines (the caller reads it through h5py)."""
        try:
            return self.record(name_addr, bbox_addr)
        except DECLINED:
            return None

    def record(self, name_addr: int, bbox_addr: int) -> tuple[str, list[list[float]]]:
        """(file name, [values of height, label, left, top, width]) of one record."""
        chars, kind = self.dataset(name_addr)
        if kind not in "ui":
            raise Unsupported("name is not a char array")
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
                        raise Unsupported("referenced value is not one number")
                    column.append(v[0])
            elif kind == "f":
                column = list(values)
            else:
                raise Unsupported("field is neither numbers nor references")
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
        raise Unsupported(f"datatype class {cls} size {size}")
    _FORMATS[key] = fmt
    return fmt



def open_reader(path, userblock: int) -> Optional[DirectReader]:
    """A reader of the HDF5 file at ``path`` whose superblock follows ``userblock`` bytes, or None when
    the file's format is one this reader does not handle."""
    try:
        with open(path, "rb") as fh:  # the map keeps its own handle
            return DirectReader.open(fh, userblock)
    except (Unsupported, ValueError, OSError, struct.error, IndexError, OverflowError):
        return None
