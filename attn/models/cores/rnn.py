"""Recurrent cores: h_t = f_h(h_{t-1}, g_t; theta_h).

- ``rnn``: h_t = ReLU(W_ih g_t + W_hh h_{t-1} + b), as in RAM (Mnih et al. 2014).
- ``lstm``: one LSTM cell (Hochreiter & Schmidhuber 1997), state (h, c).
h_0 = c_0 = 0.
"""

from __future__ import annotations

import torch
from torch import nn

from attn.models.cores.base import Core


class RNNCore(Core):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.cell = nn.RNNCell(input_size, hidden_size, nonlinearity="relu")

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(x, state)
        return h, h

    def state_from_hidden(self, h0: torch.Tensor) -> torch.Tensor:
        return h0


class LSTMCore(Core):
    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.cell = nn.LSTMCell(input_size, hidden_size)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (z, z)

    def step(self, x: torch.Tensor, state):
        h, c = self.cell(x, state)
        return h, (h, c)

    def state_from_hidden(self, h0: torch.Tensor):
        return (h0, torch.zeros_like(h0))
