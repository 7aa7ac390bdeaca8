"""Transformer-XL relative multi-head attention (Dai et al. 2019), shared by the trxl and gtrxl cores.

For a query at position i and a key at position j <= i (distance i - j), head by head:

    score(i, j) = q_i . k_j  +  q_i . W_R r_{i-j}  +  u . k_j  +  v . W_R r_{i-j}     (terms a, b, c, d)
                = (q_i + u) . k_j  +  (q_i + v) . W_R r_{i-j}

scaled by 1 / sqrt(head_dim), softmax over j, then the values. q = W_q h, k = W_k h, v = W_v h are
computed from the layer input h; r_k is the fixed sinusoidal encoding of distance k (width d); u and v
are learned per-head biases (H, head_dim). Keys and values do not depend on the query position, so the
memory of earlier steps is simply the key/value cache: step t projects only the new token and attends
over the cached keys (O(t) per step), and gradients flow through the cache (full backprop through time
over the episode). ``memory_length`` N keeps only the last N earlier steps (i - j <= N); None: all of them.
The projections W_R r_k (batch-independent) are cached too, one new distance per step while the window grows.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from attn.models.cores.base import SequenceCore

Cache = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # K, V: (B, H, L, dh); R: (D, H, dh), R[k] = W_R r_k


def relative_encoding(distances: torch.Tensor, d_model: int) -> torch.Tensor:
    """Sinusoidal encodings r_k (Vaswani et al. 2017, as in Transformer-XL): (N,) distances -> (N, d_model).

    r_k = [sin(k w_0), .., sin(k w_{m-1}), cos(k w_0), .., cos(k w_{m-1})], w_i = 10000^(-2i / d_model).
    """
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d_model, 2, device=distances.device, dtype=distances.dtype) / d_model))
    angles = distances[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[:, :d_model]


class RelativeMultiHeadAttention(nn.Module):
    """Multi-head relative attention over the causal (optionally windowed) past.

    Shapes: d = d_model, H = num_heads, dh = head_dim; B batch, T sequence, L cached keys.
    """

    no_weight_decay = ("u", "v")  # per-head offsets of the scores, not weights (attn.engine.optim)

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        bias_init: str = "normal",
    ):
        super().__init__()
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        width = num_heads * head_dim
        self.qkv = nn.Linear(d_model, 3 * width, bias=False)  # W_q, W_k, W_v
        self.r_net = nn.Linear(d_model, width, bias=False)  # W_R
        self.out = nn.Linear(width, d_model, bias=False)  # W_o
        self.u = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.v = nn.Parameter(torch.zeros(num_heads, head_dim))
        if bias_init == "normal":
            nn.init.normal_(self.u, std=0.02)
            nn.init.normal_(self.v, std=0.02)
        elif bias_init != "zeros":  # pragma: no cover - internal option
            raise ValueError(f"bias_init must be 'normal' or 'zeros', not {bias_init!r}")
        self.drop = nn.Dropout(dropout)
        self.scale = head_dim**-0.5

    def _rel(self, distances: torch.Tensor) -> torch.Tensor:
        """W_R r_k for the given distances: (N,) -> (N, H, dh)."""
        r = relative_encoding(distances, self.d_model)
        return self.r_net(r).view(-1, self.num_heads, self.head_dim)

    def forward_sequence(self, h: torch.Tensor, memory_length: Optional[int]) -> torch.Tensor:
        """h: (B, T, d) layer inputs at positions 0..T-1 -> (B, T, d); query i sees keys max(0, i-N)..i."""
        B, T, _ = h.shape
        H, dh = self.num_heads, self.head_dim
        q, k, v = self.qkv(h).view(B, T, 3, H, dh).unbind(2)  # each (B, T, H, dh)
        pos = torch.arange(T, device=h.device)
        dist = pos[:, None] - pos[None, :]  # (T, T): i - j
        R = self._rel(pos.to(h.dtype))  # (T, H, dh): W_R r_k, k = 0..T-1
        ac = torch.einsum("bihd,bjhd->bhij", q + self.u, k)  # terms (a) + (c)
        bd_by_distance = torch.einsum("bihd,khd->bhik", q + self.v, R)  # (B, H, T, T over k)
        bd = bd_by_distance.gather(-1, dist.clamp(min=0).expand(B, H, T, T))  # terms (b) + (d) at k = i - j
        masked = dist < 0
        if memory_length:
            masked = masked | (dist > memory_length)
        scores = ((ac + bd) * self.scale).masked_fill(masked, float("-inf"))
        p = self.drop(F.softmax(scores, dim=-1))
        out = torch.einsum("bhij,bjhd->bihd", p, v).reshape(B, T, H * dh)
        return self.out(out)

    def init_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Cache:
        """An empty memory: no slots at all (nothing zero-filled to attend to)."""
        H, dh = self.num_heads, self.head_dim
        empty = torch.zeros(batch_size, H, 0, dh, device=device, dtype=dtype)
        return empty, empty, torch.zeros(0, H, dh, device=device, dtype=dtype)

    def step(self, h: torch.Tensor, cache: Cache, memory_length: Optional[int]) -> tuple[torch.Tensor, Cache]:
        """h: (B, d) the layer input of the new step -> ((B, d), cache holding at most N earlier steps)."""
        B = h.shape[0]
        H, dh = self.num_heads, self.head_dim
        K, V, R = cache
        q, k, v = self.qkv(h).view(B, 3, H, dh).unbind(1)  # each (B, H, dh)
        K = torch.cat([K, k[:, :, None]], dim=2)  # (B, H, L, dh): keys of steps t-L+1 .. t
        V = torch.cat([V, v[:, :, None]], dim=2)
        L = K.shape[2]
        if R.shape[0] < L:  # the window grew by one: one new distance, L - 1
            R = torch.cat([R, self._rel(torch.full((1,), L - 1, device=h.device, dtype=h.dtype))], dim=0)
        ac = torch.einsum("bhd,bhld->bhl", q + self.u, K)
        bd = torch.einsum("bhd,lhd->bhl", q + self.v, R[:L].flip(0))  # key m is at distance L - 1 - m
        p = self.drop(F.softmax((ac + bd) * self.scale, dim=-1))
        out = self.out(torch.einsum("bhl,bhld->bhd", p, V).reshape(B, H * dh))
        if memory_length:
            K, V = K[:, :, -memory_length:], V[:, :, -memory_length:]
        return out, (K, V, R)


class FeedForward(nn.Sequential):
    """Position-wise FFN: Linear(d, inner) -> ReLU -> Dropout -> Linear(inner, d)."""

    def __init__(self, d_model: int, inner_size: int, dropout: float = 0.0):
        super().__init__(
            nn.Linear(d_model, inner_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(inner_size, d_model)
        )


class CrossAttention(nn.Module):
    """Multi-head attention from the stream to a fixed memory M (B, M_len, d) (DRAM's ViT tokens):

        out = W_o [softmax(q_h K_h^T / sqrt(dh)) V_h]_h,  q = W_q h,  K = W_k M,  V = W_v M

    content term only: no mask (the memory is not a sequence in time) and no positional term.
    """

    def __init__(self, d_model: int, num_heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        width = num_heads * head_dim
        self.q = nn.Linear(d_model, width, bias=False)
        self.kv = nn.Linear(d_model, 2 * width, bias=False)
        self.out = nn.Linear(width, d_model, bias=False)
        self.dropout = dropout

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M (B, M_len, d) -> K, V (B, H, M_len, dh): computed once per episode."""
        B, M, _ = memory.shape
        k, v = self.kv(memory).view(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return k, v

    def forward(self, h: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """h (B, d) or (B, T, d) -> the same shape."""
        K, V = kv
        q = self.q(h if h.dim() == 3 else h[:, None])  # (B, T, H * dh)
        B, T, _ = q.shape
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, K, V, dropout_p=p).transpose(1, 2).reshape(B, T, -1)
        out = self.out(out)
        return out if h.dim() == 3 else out[:, 0]


Attend = Callable[[torch.Tensor], torch.Tensor]


class RelativeLayer(nn.Module):
    """A layer built around :class:`RelativeMultiHeadAttention` (and, with ``cross``, a
    :class:`CrossAttention` sub-block); subclasses define :meth:`block`, which maps the stream x (any
    leading shape, ..., d) through the layer given ``attend`` (the attention sub-module applied to a
    tensor of the same shape as x) and ``read`` (cross-attention to the memory, or None)."""

    attn: RelativeMultiHeadAttention
    cross: Optional[CrossAttention]  # set by every subclass (None: no cross-attention)

    def block(self, x: torch.Tensor, attend: Attend, read: Optional[Attend]) -> torch.Tensor:
        raise NotImplementedError

    def _reader(self, kv) -> Optional[Attend]:
        return None if kv is None else (lambda h: self.cross(h, kv))

    def forward_sequence(self, x: torch.Tensor, memory_length: Optional[int], kv=None) -> torch.Tensor:
        """x: (B, T, d) -> (B, T, d); kv: this layer's memory keys/values or None."""
        return self.block(x, lambda h: self.attn.forward_sequence(h, memory_length), self._reader(kv))

    def step(self, x: torch.Tensor, cache: Cache, memory_length: Optional[int], kv=None) -> tuple[torch.Tensor, Cache]:
        """x: (B, d) -> ((B, d), new cache)."""
        new: list[Cache] = []

        def attend(h: torch.Tensor) -> torch.Tensor:
            out, c = self.attn.step(h, cache, memory_length)
            new.append(c)
            return out

        y = self.block(x, attend, self._reader(kv))
        return y, new[0]


class RelativeTransformerCore(SequenceCore):
    """Input projection (input_size -> d when they differ) and dropout, a stack of
    :class:`RelativeLayer`, then ``final_norm``. Caches one (K, V, W_R r) triple per layer; with
    cross-attention, each layer's memory keys/values once per episode."""

    absolute_positions = False  # only distances i - j reach the attention

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        layers: list[RelativeLayer],
        final_norm: nn.Module,
        dropout: float,
        memory_length: Optional[int],
        use_cache: bool,
    ):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.proj = nn.Linear(input_size, hidden_size) if input_size != hidden_size else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)
        self.final_norm = final_norm
        self.memory_length = memory_length or None
        self.use_cache = use_cache
        self.cross_attention = all(layer.cross is not None for layer in layers)

    def _memory_kv(self, memory: torch.Tensor) -> tuple:
        return tuple(layer.cross.memory_kv(memory) for layer in self.layers)

    def forward_sequence(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x = (g_1..g_T): (B, T, input_size) -> (h_1..h_T): (B, T, hidden_size), causal; memory
        (B, M, d): what every layer cross-attends to (cross_attention cores only)."""
        if memory is not None and not self.cross_attention:
            raise ValueError("this core was built without cross_attention: it cannot read a memory")
        kvs = self._memory_kv(memory) if memory is not None else (None,) * len(self.layers)
        y = self.drop(self.proj(x))
        for layer, kv in zip(self.layers, kvs):
            y = layer.forward_sequence(y, self.memory_length, kv)
        return self.final_norm(y)

    def _init_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
        return tuple(layer.attn.init_cache(batch_size, device, dtype) for layer in self.layers)

    def _step_cached(self, x: torch.Tensor, t: int, layers: tuple, memory_kv) -> tuple[torch.Tensor, tuple]:
        y = self.drop(self.proj(x))
        new = []
        kvs = memory_kv if memory_kv is not None else (None,) * len(self.layers)
        for layer, cache, kv in zip(self.layers, layers, kvs):
            y, cache = layer.step(y, cache, self.memory_length, kv)
            new.append(cache)
        return self.final_norm(y), tuple(new)
