"""What a test pass shows beyond its error rate: where the policy looks and which labels it gets right.

:class:`SplitStats` is filled batch by batch during one evaluation pass (mean policy, one episode per
image) and holds only sums, so that the shards of all DDP ranks add up to the whole split:

    glimpse_hist   (H, W)   how many glimpses (all images, all steps t) were centred on each pixel
                            (c = floor((clamp(l_t) + 1) / 2 * (W, H)), the retina's own rule)
    table                   the objective's per-split table: accuracy per class (classification) or
                            per label length and slot (sequences), see :mod:`attn.engine.objective`
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from attn.data.base import DataSpec
from attn.engine.objective import objective_for
from attn.models.retina import glimpse_centres


class SplitStats:
    def __init__(self, spec: DataSpec, device: torch.device):
        self.spec = spec
        self.height, self.width = spec.height, spec.width
        self.glimpse_hist = torch.zeros(self.height, self.width, dtype=torch.float64, device=device)
        self.objective = objective_for(spec)
        self.table = self.objective.table(device)

    @torch.no_grad()
    def add(self, locations: torch.Tensor, log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        """One batch: locations (B, T, 2) of the glimpses taken; log_probs (B, C) or (B, L, C);
        targets (B,) or (B, L') padded with IGNORE_INDEX."""
        c = glimpse_centres(locations.reshape(-1, 2), self.height, self.width)
        x = c[:, 0].clamp(0, self.width - 1)
        y = c[:, 1].clamp(0, self.height - 1)
        self.glimpse_hist.view(-1).index_add_(
            0, y * self.width + x, torch.ones(len(x), dtype=torch.float64, device=x.device)
        )
        self.table.add(self.objective.predict(log_probs), self.objective.canonical(targets))

    def reduce(self) -> None:
        """Sum over DDP ranks (every rank must call it)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.glimpse_hist)
        self.table.reduce()
