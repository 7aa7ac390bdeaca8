"""Process-wide torch settings shared by training workers and benchmarks."""

from __future__ import annotations

from typing import Optional

import torch


def configure_torch(num_threads: Optional[int] = None) -> None:
    """Set the intra-op thread count (None: leave torch's default) and flush denormals to zero.

    Denormal floats appear in small gradients late in training and make CPU matrix products several
    times slower; flushing them changes values only below 1e-38.
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.set_flush_denormal(True)
