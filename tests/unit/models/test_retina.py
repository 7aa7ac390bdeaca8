"""The retina against a slow, per-sample reference written from the definition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attn.models.retina import Retina, patch_sizes


def reference_glimpse(img: torch.Tensor, loc: torch.Tensor, g: int, k: int, s: float, pad: float) -> torch.Tensor:
    """One image (C, H, W), one location (2,) -> (k*C, g, g), by explicit pixel reads and pooling."""
    C, H, W = img.shape
    lx, ly = (float(v) for v in loc.clamp(-1, 1))
    cx = math.floor(0.5 * (lx + 1) * W)
    cy = math.floor(0.5 * (ly + 1) * H)
    out = []
    for i in range(k):
        size = math.floor(g * s**i + 1e-9)
        top, left = cy - size // 2, cx - size // 2
        patch = torch.full((C, size, size), pad, dtype=img.dtype)
        for r in range(size):
            for c in range(size):
                y, x = top + r, left + c
                if 0 <= y < H and 0 <= x < W:
                    patch[:, r, c] = img[:, y, x]
        out.append(F.adaptive_avg_pool2d(patch[None], g)[0])
    return torch.cat(out, 0)


CASES = [
    # (C, H, W, g, k, s)
    (1, 28, 28, 8, 1, 2.0),
    (1, 28, 28, 7, 1, 2.0),  # odd patch
    (3, 20, 33, 5, 3, 2.0),  # non-square, RGB, odd, several scales
    (2, 31, 17, 4, 2, 3.0),
    (1, 24, 24, 6, 3, 1.5),  # non-integer scale: sizes 6, 9, 13
    (1, 9, 12, 3, 4, 2.0),  # largest patch (24) bigger than the image
]


@pytest.mark.parametrize("C,H,W,g,k,s", CASES)
def test_matches_per_sample_reference(C, H, W, g, k, s):
    gen = torch.Generator().manual_seed(C * 1000 + H * 10 + g)
    B = 24
    images = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    loc = torch.rand(B, 2, generator=gen, dtype=torch.float64) * 2.4 - 1.2  # some beyond [-1, 1]
    loc[:4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    pad = 0.37
    retina = Retina(g, k, s, pad_value=pad).double()
    got = retina(retina.pad(images), loc, H, W)
    assert got.shape == (B, k * C, g, g)
    for b in range(B):
        want = reference_glimpse(images[b], loc[b], g, k, s, pad)
        torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-12)
    # written into a caller's buffer (a row of the hand-written episode's (T, B, .) glimpse buffer)
    buffer = torch.full((3, B, k * C * g * g), float("nan"), dtype=torch.float64)
    into = retina(retina.pad(images), loc, H, W, out=buffer[1])
    assert into.data_ptr() == buffer[1].data_ptr()
    assert torch.equal(buffer[1].view(B, k * C, g, g), got)
    assert buffer[0].isnan().all() and buffer[2].isnan().all()


def test_hand_worked_centre_and_axes():
    # 4 x 6 image with value 10 * row + col; g = 2 at l = (0, 0): centre (cy, cx) = (2, 3),
    # rows [1, 3), cols [2, 4).
    img = (10 * torch.arange(4)[:, None] + torch.arange(6)[None, :]).double()[None, None]
    r = Retina(2, 1, 2.0).double()
    out = r(r.pad(img), torch.zeros(1, 2, dtype=torch.float64), 4, 6)
    assert out[0, 0].tolist() == [[12.0, 13.0], [22.0, 23.0]]
    # l_x moves along columns (width), l_y along rows (height): l = (-1, 1) -> cx = 0, cy = 4.
    out = r(r.pad(img), torch.tensor([[-1.0, 1.0]], dtype=torch.float64), 4, 6)
    # rows [3, 5) x cols [-1, 1): only pixel (3, 0) = 30 is inside the image.
    assert out[0, 0].tolist() == [[0.0, 30.0], [0.0, 0.0]]
    out = r(r.pad(img), torch.tensor([[-1.0, 0.5]], dtype=torch.float64), 4, 6)
    # cy = floor(0.75 * 4) = 3 -> rows [2, 4); cx = 0 -> cols [-1, 1): column -1 is padding (0).
    assert out[0, 0].tolist() == [[0.0, 20.0], [0.0, 30.0]]


def test_two_scales_average_pool():
    # 8 x 8 image, g = 2, two scales (sizes 2, 4) at the centre (4, 4).
    img = torch.arange(64, dtype=torch.float64).view(1, 1, 8, 8)
    r = Retina(2, 2, 2.0).double()
    out = r(r.pad(img), torch.zeros(1, 2, dtype=torch.float64), 8, 8)
    assert out[0, 0].tolist() == [[27.0, 28.0], [35.0, 36.0]]
    # scale 1: rows/cols [2, 6), 2 x 2 block means
    blocks = img[0, 0, 2:6, 2:6].reshape(2, 2, 2, 2).mean(dim=(1, 3))
    assert out[0, 1].tolist() == blocks.tolist()


def test_patch_sizes():
    assert patch_sizes(8, 3, 2.0) == [8, 16, 32]
    assert patch_sizes(6, 3, 1.5) == [6, 9, 13]
    assert patch_sizes(12, 4, 2.0) == [12, 24, 48, 96]
