"""Process-wide torch settings shared by training workers and benchmarks."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional

import torch

# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def configure_torch(num_threads: Optional[int] = None) -> None:
    """Set the intra-op thread count (None: leave torch's default), flush denormals to zero and keep
    freed memory in the process.

    Denormal floats appear in small gradients late in training and make CPU matrix products several
    times slower; flushing them changes values only below 1e-38.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.set_flush_denormal(True)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """On Linux with glibc: serve blocks up to 32 MiB from the heap and keep up to 512 MiB of freed
    heap, instead of mapping every block over 128 KiB afresh and returning it to the system when freed.

    A training step allocates and frees the same few hundred KiB-sized tensors every time; with
    glibc's defaults many of them are fresh mappings whose every page faults on first touch (up to 400
    faults per step of ``python -m attn.bench ram``, depending on glibc's adaptive threshold; the
    benchmark runs about 5% faster without them: see docs/benchmarks.md). Values are unchanged; only
    where the memory comes from. Returns False where the C library is not glibc (nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 512 << 20))
