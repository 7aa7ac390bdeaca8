"""The core interface shared by RAM (and later DRAM): integrate one glimpse vector per step.

    state = core.init_state(batch_size, device, dtype)
    h_t, state = core.step(g_t, state)          # g_t: (B, input_size) -> h_t: (B, hidden_size)

States are explicit tensors passed in and out (never buffers mutated inside ``forward``), so a core
holds no per-episode state, runs on the input's device, and gradients flow through the whole episode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Core(nn.Module):
    input_size: int
    hidden_size: int

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError
