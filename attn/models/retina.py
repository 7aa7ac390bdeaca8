"""The glimpse sensor rho(x_t, l_{t-1}) of RAM (Mnih et al. 2014): k concentric square patches.

Coordinates: l in [-1, 1]^2 with l[..., 0] = x (column) and l[..., 1] = y (row); (0, 0) is the image
centre. The centre pixel is (cy, cx) = (floor((l_y + 1) / 2 * H), floor((l_x + 1) / 2 * W)), after
clamping l to [-1, 1] (so l = 1 reads index W, inside the padding).

Patch i = 0..k-1 has side size_i = floor(g * s^i) and covers rows [cy - size_i // 2, cy - size_i // 2 +
size_i) and the columns likewise; odd and even sizes both work. Pixels outside the image read
``pad_value``. Each patch is reduced to g x g by area averaging (adaptive average pooling: exact
block means for integer s, overlapping bins otherwise).

Implementation: the image is padded once per episode (:meth:`Retina.pad`), then each glimpse is one
gather of the largest S x S patch for the whole batch and one adaptive average pooling per scale of
the view of patch i inside it. There is no Python loop over samples.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def patch_sizes(patch_size: int, num_scales: int, scale: float) -> list[int]:
    """size_i = floor(g * s^i), i = 0..k-1."""
    return [int(math.floor(patch_size * scale**i + 1e-9)) for i in range(num_scales)]


def glimpse_centres(loc: torch.Tensor, height: int, width: int, half: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(..., 2) locations l -> (..., 2) int64 centre pixels (cx, cy) = floor((clamp(l) + 1) / 2 * (W, H)).

    half: (W/2, H/2) as a tensor of loc's dtype and device, when the caller keeps one (the retina does).
    """
    if half is None:
        half = loc.new_tensor([0.5 * width, 0.5 * height])
    return torch.floor((loc.clamp(-1.0, 1.0) + 1.0) * half).long()


def patch_boxes(loc: torch.Tensor, height: int, width: int, sizes: list[int]) -> torch.Tensor:
    """The pixels each patch covers: (..., 2) locations -> (..., k, 4) int64 boxes (x0, y0, x1, y1),
    x1 and y1 exclusive, in image pixels (they may reach outside the image, where the pad value is read)."""
    c = glimpse_centres(loc, height, width)
    s = torch.tensor(sizes, dtype=torch.long, device=loc.device)
    x0 = c[..., None, 0] - s // 2
    y0 = c[..., None, 1] - s // 2
    return torch.stack([x0, y0, x0 + s, y0 + s], dim=-1)


class Retina(nn.Module):
    """Extracts glimpses: images (B, C, H, W), locations l (B, 2) -> (B, k * C, g, g).

    Args:
        patch_size: g, side of the finest patch and of every returned patch.
        num_scales: k, patches per glimpse.
        scale: s, each patch s times wider than the previous one (any s >= 1).
        pad_value: value read outside the image.
    """

    def __init__(self, patch_size: int = 8, num_scales: int = 1, scale: float = 2.0, pad_value: float = 0.0):
        super().__init__()
        self.g = patch_size
        self.k = num_scales
        self.sizes = patch_sizes(patch_size, num_scales, scale)
        self.S = max(self.sizes)
        self.pad_value = float(pad_value)
        # Identity pooling (k = 1, no resize): the gathered patch is the glimpse.
        self.identity = self.k == 1 and self.S == self.g
        # Patch i inside the largest one: rows and columns [off_i, off_i + size_i).
        self.offsets = [self.S // 2 - n // 2 for n in self.sizes]
        self._offset_cache: dict = {}

    def pad(self, images: torch.Tensor) -> torch.Tensor:
        """Pad once per episode: S // 2 before, S - S // 2 after, on both spatial axes."""
        lo, hi = self.S // 2, self.S - self.S // 2
        return F.pad(images, (lo, hi, lo, hi), value=self.pad_value)

    def _index_constants(self, height: int, width: int, padded_width: int, device: torch.device, dtype: torch.dtype):
        """Per image size, cached: (W/2, H/2) for :func:`glimpse_centres`, the flat strides (1, W + S) of
        a padded image, and (identity retina; None otherwise) the (g*g,) offsets of a patch's pixels
        from its top-left. A compiled episode builds them in its graph (the compiler folds them):
        filling the cache while tracing would change what the graph was traced against and compile it
        again at the next call."""
        if torch.compiler.is_compiling():
            return self._make_constants(height, width, padded_width, device, dtype)
        key = (height, width, padded_width, device, dtype)
        cached = self._offset_cache.get(key)
        if cached is None:
            cached = self._offset_cache[key] = self._make_constants(height, width, padded_width, device, dtype)
        return cached

    def _make_constants(self, height: int, width: int, padded_width: int, device: torch.device, dtype: torch.dtype):
        o = torch.arange(self.S, device=device)
        return (
            torch.tensor([0.5 * width, 0.5 * height], device=device, dtype=dtype),
            torch.tensor([1, padded_width], device=device),
            (o[:, None] * padded_width + o[None, :]).reshape(-1) if self.identity else None,
        )

    def forward(
        self, padded: torch.Tensor, loc: torch.Tensor, height: int, width: int, out: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Glimpses at l from an image already padded by :meth:`pad`.

        Args:
            padded: (B, C, H + S, W + S) from :meth:`pad`.
            loc: (B, 2) locations in [-1, 1] (clamped here); no gradient flows through them.
            height, width: H and W of the unpadded image.
            out: optional contiguous buffer of B * k * C * g * g elements to write the glimpses into
                (the hand-written episode keeps all T glimpses in one (T, B, .) buffer).
        Returns:
            (B, k * C, g, g): scale-major channel order (all C channels of patch 0, then patch 1, ...).
        """
        B, C, Hp, Wp = padded.shape
        half, strides, offsets = self._index_constants(height, width, Wp, padded.device, loc.dtype)
        c = glimpse_centres(loc, height, width, half)
        # Top-left of the S x S patch in padded coordinates is exactly (cy, cx): the padding is S // 2.
        if self.identity:
            idx = (c * strides).sum(1, keepdim=True) + offsets  # (B, g*g) flat indices
            flat = padded.reshape(B, C, Hp * Wp)
            index = idx[:, None, :] if C == 1 else idx[:, None, :].expand(B, C, -1)
            if out is None:
                return flat.gather(2, index).view(B, C, self.g, self.g)
            return torch.gather(flat, 2, index, out=out.view(B, C, -1)).view(B, C, self.g, self.g)
        # Every S x S window of the padded image as a view; indexing it copies each sample's own.
        windows = padded.unfold(2, self.S, 1).unfold(3, self.S, 1)  # (B, C, H + 1, W + 1, S, S)
        patch = windows[torch.arange(B, device=padded.device), :, c[:, 1], c[:, 0]]  # (B, C, S, S)
        shape = (B, self.k, C, self.g, self.g)
        glimpses = patch.new_empty(shape) if out is None else out.view(shape)
        for i, (n, off) in enumerate(zip(self.sizes, self.offsets)):
            # a view of patch i, pooled over its own n x n pixels only: the work grows with the sum of
            # n_i^2, not with k S^2
            part = patch[:, :, off : off + n, off : off + n]
            glimpses[:, i] = part if n == self.g else F.adaptive_avg_pool2d(part, self.g)
        return glimpses.view(B, self.k * C, self.g, self.g)

    def extra_repr(self) -> str:
        return f"g={self.g}, k={self.k}, sizes={self.sizes}, pad_value={self.pad_value}"
