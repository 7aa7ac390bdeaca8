"""Transformer-XL core (Dai et al. 2019): relative attention over the episode so far, memory = the
key/value cache of earlier steps (see :mod:`attn.models.cores.attention`).

One layer, with stream x (B, ..., d), attention A (relative, causal, windowed by ``memory_length``) and
FFN(x) = W_2 ReLU(W_1 x + b_1) + b_2 (inner width ``inner_size``):

    norm="post" (the paper):  x = LN(x + A(x));      x = LN(x + FFN(x))
    norm="pre":               x = x + A(LN(x));      x = x + FFN(LN(x));   a final LN after the last layer

With ``cross_attention`` a sub-block C reading the memory (:class:`CrossAttention`) sits between the
two, in the same style: post x = LN(x + C(x)), pre x = x + C(LN(x)).

u, v (per-head biases) start at N(0, 0.02^2). g_t (input_size) is projected to d when the widths differ.
"""

from __future__ import annotations

from typing import Literal, Optional

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


class TrXLLayer(RelativeLayer):
    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        inner_size: int,
        dropout: float = 0.0,
        norm: Literal["post", "pre"] = "post",
        cross_attention: bool = False,
    ):
        super().__init__()
        self.attn = RelativeMultiHeadAttention(d_model, num_heads, head_dim, dropout, bias_init="normal")
        self.ffn = FeedForward(d_model, inner_size, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.cross = CrossAttention(d_model, num_heads, head_dim, dropout) if cross_attention else None
        if cross_attention:
            self.ln_c = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.pre = norm == "pre"

    def block(self, x: torch.Tensor, attend: Attend, read: Optional[Attend]) -> torch.Tensor:
        if self.pre:
            x = x + self.drop(attend(self.ln1(x)))
            if read is not None:
                x = x + self.drop(read(self.ln_c(x)))
            return x + self.drop(self.ffn(self.ln2(x)))
        x = self.ln1(x + self.drop(attend(x)))
        if read is not None:
            x = self.ln_c(x + self.drop(read(x)))
        return self.ln2(x + self.drop(self.ffn(x)))


class TrXLCore(RelativeTransformerCore):
    """Stack of :class:`TrXLLayer`; h_t = the last layer's output at step t (B, d)."""

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
        norm: Literal["post", "pre"] = "post",
        use_cache: bool = True,
        cross_attention: bool = False,
    ):
        head_dim = head_dim or hidden_size // num_heads
        inner_size = inner_size or 4 * hidden_size
        layers = [
            TrXLLayer(hidden_size, num_heads, head_dim, inner_size, dropout, norm, cross_attention)
            for _ in range(num_layers)
        ]
        final = nn.LayerNorm(hidden_size) if norm == "pre" else nn.Identity()
        super().__init__(input_size, hidden_size, layers, final, dropout, memory_length, use_cache)
