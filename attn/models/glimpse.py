"""Glimpse network f_g(theta_g) of RAM: combines the retina's patches ("what") with their location
("where") into the glimpse vector g_t fed to the core.

    h_what  = ReLU(Linear(k*C*g*g -> what_size)(rho(x, l)))
    h_where = ReLU(Linear(2 -> where_size)(l))
    g_t     = ReLU(Linear(what_size -> d)(h_what) + Linear(where_size -> d)(h_where))

The two output projections are one Linear over [h_what, h_where] (the sum of two linear maps is a
linear map of the concatenation), which halves the matrix products per step. The widths are
independent: nothing requires what_size + where_size == d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GlimpseNetwork(nn.Module):
    """(B, k*C*g*g) patches and (B, 2) locations -> g_t (B, d)."""

    def __init__(self, in_features: int, what_size: int, where_size: int, out_size: int):
        super().__init__()
        self.what = nn.Linear(in_features, what_size)
        self.where = nn.Linear(2, where_size)
        self.out = nn.Linear(what_size + where_size, out_size)

    def forward(self, patches: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        h_what = F.relu(self.what(patches))
        h_where = F.relu(self.where(loc))
        return F.relu(self.out(torch.cat([h_what, h_where], dim=-1)))


class ConvGlimpseNetwork(nn.Module):
    """DRAM's glimpse network (Ba et al. 2015): a conv "what" path fused with a "where" path.

        what  = ReLU(Linear(flatten(ReLU(conv3x3(ReLU(conv3x3(ReLU(conv5x5(rho(x, l))))))))))  -> (B, d)
        where = ReLU(Linear(2 -> d)(l))   fusion "multiply": g = what * where   (as in the paper)
                Linear(2 -> d)(l)         fusion "add":      g = what + where   (a learned location embedding)

    The convolutions have stride 1 and no padding, so a g x g glimpse leaves a (g - 8) x (g - 8) map
    of channels[2]: g >= 9. Input: the retina's (B, k, g, g) gray patches (k scales as channels).
    """

    def __init__(self, num_scales: int, patch_size: int, channels: tuple[int, int, int], out_size: int, fusion: str):
        super().__init__()
        if patch_size < 9:
            raise ValueError(f"the conv glimpse network needs patch_size >= 9, got {patch_size}")
        c1, c2, c3 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(num_scales, c1, 5),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3),
            nn.ReLU(),
        )
        self.what = nn.Linear(c3 * (patch_size - 8) ** 2, out_size)
        self.where = nn.Linear(2, out_size)
        self.multiply = fusion == "multiply"

    def forward(self, patches: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """patches (B, k, g, g), loc (B, 2) -> g_t (B, d)."""
        what = F.relu(self.what(self.convs(patches).flatten(1)))
        if self.multiply:
            return what * F.relu(self.where(loc))
        return what + self.where(loc)
