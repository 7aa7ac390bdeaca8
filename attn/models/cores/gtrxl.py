"""Gated Transformer-XL core (Parisotto et al. 2019, "Stabilizing Transformers for Reinforcement Learning").

TrXL relative attention A (u, v zero-initialised; memory = the key/value cache of the episode) with
the identity-map reordering (LayerNorm only on each sub-module's input, ReLU on its output) and a GRU
gate g in place of each residual add. With stream x (B, ..., d):

    y = ReLU(A(LN(x)));                      x = g_1(x, y)
    y = ReLU(W_2 ReLU(W_1 LN(x) + b_1) + b_2); x = g_2(x, y)       (FFN of inner width inner_size)

With ``cross_attention``, a gated sub-block reading the memory (:class:`CrossAttention` C) sits between
the two: y = ReLU(C(LN(x))); x = g_c(x, y).

    g(x, y):  r = sigmoid(W_r y + U_r x)
              z = sigmoid(W_z y + U_z x - b_g)
              h_hat = tanh(W_g y + U_g (r * x))
              out = (1 - z) * x + z * h_hat

b_g (learned, per unit) starts at ``gate_bias`` (2.0): z ~ sigmoid(-2) ~ 0.12, so each layer starts near
the identity map. No final LayerNorm (the stream itself is the output).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from attn.models.cores.attention import (
    Attend,
    CrossAttention,
    FeedForward,
    RelativeLayer,
    RelativeMultiHeadAttention,
    RelativeTransformerCore,
)


class GRUGate(nn.Module):
    """out = (1 - z) * x + z * h_hat, the GRU-style gating layer of GTrXL (x: stream, y: sub-module output)."""

    no_weight_decay = ("b_g",)  # decay would pull the gates away from their near-identity start

    def __init__(self, d_model: int, gate_bias: float = 2.0):
        super().__init__()
        self.w = nn.Linear(d_model, 3 * d_model, bias=False)  # W_r, W_z, W_g
        self.u_rz = nn.Linear(d_model, 2 * d_model, bias=False)  # U_r, U_z
        self.u_g = nn.Linear(d_model, d_model, bias=False)  # U_g
        self.b_g = nn.Parameter(torch.full((d_model,), float(gate_bias)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wr, wz, wg = self.w(y).chunk(3, dim=-1)
        ur, uz = self.u_rz(x).chunk(2, dim=-1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.b_g)
        h_hat = torch.tanh(wg + self.u_g(r * x))
        return (1.0 - z) * x + z * h_hat


class GTrXLLayer(RelativeLayer):
    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        inner_size: int,
        dropout: float = 0.0,
        gate_bias: float = 2.0,
        cross_attention: bool = False,
    ):
        super().__init__()
        self.attn = RelativeMultiHeadAttention(d_model, num_heads, head_dim, dropout, bias_init="zeros")
        self.ffn = FeedForward(d_model, inner_size, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.gate1, self.gate2 = GRUGate(d_model, gate_bias), GRUGate(d_model, gate_bias)
        self.cross = CrossAttention(d_model, num_heads, head_dim, dropout) if cross_attention else None
        if cross_attention:
            self.ln_c, self.gate_c = nn.LayerNorm(d_model), GRUGate(d_model, gate_bias)
        self.drop = nn.Dropout(dropout)

    def block(self, x: torch.Tensor, attend: Attend, read: Optional[Attend]) -> torch.Tensor:
        x = self.gate1(x, self.drop(torch.relu(attend(self.ln1(x)))))
        if read is not None:
            x = self.gate_c(x, self.drop(torch.relu(read(self.ln_c(x)))))
        return self.gate2(x, self.drop(torch.relu(self.ffn(self.ln2(x)))))


class GTrXLCore(RelativeTransformerCore):
    """Stack of :class:`GTrXLLayer`; h_t = the last layer's output at step t (B, d)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        num_heads: int = 1,
        head_dim: Optional[int] = None,
        inner_size: Optional[int] = None,
        dropout: float = 0.0,
        memory_length: Optional[int] = None,
        gate_bias: float = 2.0,
        use_cache: bool = True,
        cross_attention: bool = False,
    ):
        head_dim = head_dim or hidden_size // num_heads
        inner_size = inner_size or 4 * hidden_size
        layers = [
            GTrXLLayer(hidden_size, num_heads, head_dim, inner_size, dropout, gate_bias, cross_attention)
            for _ in range(num_layers)
        ]
        super().__init__(input_size, hidden_size, layers, nn.Identity(), dropout, memory_length, use_cache)
