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
