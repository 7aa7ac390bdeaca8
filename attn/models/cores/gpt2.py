"""GPT-2 core: ``transformers.GPT2Model`` (Radford et al. 2019) built from a local config, fed
``inputs_embeds`` (no token embedding, no hub access).

Pre-LN blocks x = x + Attn(LN(x)); x = x + MLP(LN(x)) with causal multi-head attention, learned absolute
positions p_t added to the (projected) glimpse vector, GELU MLP of inner width ``inner_size``, a final
LN. :meth:`GPT2Core.forward_sequence` is one call of ``GPT2Model``. A cached ``step`` runs the same
blocks' modules on the one new position against the key/value cache of the earlier steps (a single
query attends to every cached key, so no mask is needed); calling ``GPT2Model`` for one position
would cost about a millisecond of Python per step in mask and cache objects. The state carries the
per-layer (K, V) tensors, each (B, H, t, d / H), and is never mutated after it is returned.

With ``cross_attention`` (GPT2Config.add_cross_attention) every block also attends to a memory
(B, M, d) (``encoder_hidden_states``); a cached episode projects its keys/values once per episode.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from attn.models.cores.base import SequenceCore


class GPT2Core(SequenceCore):
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        num_heads: int = 1,
        inner_size: Optional[int] = None,
        dropout: float = 0.0,
        n_positions: int = 1024,
        use_cache: bool = True,
        attn_implementation: str = "sdpa",
        cross_attention: bool = False,
    ):
        super().__init__()
        from transformers import GPT2Config, GPT2Model  # slow import: only when used

        if hidden_size % num_heads:
            raise ValueError(f"gpt2 core: num_heads = {num_heads} must divide hidden_size = {hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.n_positions = n_positions
        self.use_cache = use_cache
        self.cross_attention = cross_attention
        config = GPT2Config(
            vocab_size=1,
            n_positions=n_positions,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_inner=inner_size,  # None: 4 * hidden_size
            activation_function="gelu_pytorch_tanh",  # the tanh GELU of GPT-2 as one fused kernel
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            bos_token_id=None,
            eos_token_id=None,
            use_cache=use_cache,
            add_cross_attention=cross_attention,
            attn_implementation=attn_implementation,
        )
        self.proj = nn.Linear(input_size, hidden_size) if input_size != hidden_size else nn.Identity()
        self.gpt2 = GPT2Model(config)
        self.gpt2.wte = None  # inputs come as embeddings: no token table (it would never get a gradient)
        self.num_heads = num_heads

    def _check_length(self, length: int) -> None:
        if length > self.n_positions:
            raise ValueError(
                f"gpt2 core: step {length} is beyond n_positions = {self.n_positions} learned positions "
                "(raise model.core.n_positions)"
            )

    def forward_sequence(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x = (g_1..g_T): (B, T, input_size) -> (h_1..h_T): (B, T, d), causal, positions 0..T-1;
        memory (B, M, d): what every block cross-attends to (cross_attention only)."""
        self._check_length(x.shape[1])
        if memory is not None and not self.cross_attention:
            raise ValueError("this core was built without cross_attention: it cannot read a memory")
        return self.gpt2(inputs_embeds=self.proj(x), encoder_hidden_states=memory, use_cache=False).last_hidden_state

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ..., d) -> (B, H, ..., d / H) for one position (B, d) or a sequence (B, M, d)."""
        if x.dim() == 2:
            return x.view(x.shape[0], self.num_heads, 1, -1)
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def _memory_kv(self, memory: torch.Tensor) -> tuple:
        """Each block's cross-attention keys and values of the memory, (B, H, M, d / H) each."""
        d = self.hidden_size
        return tuple(
            tuple(self._heads(part) for part in block.crossattention.c_attn(memory).split(d, dim=-1))
            for block in self.gpt2.h
        )

    def _attention(self, attn, q: torch.Tensor, K: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """One query per row (B, H, 1, dh) over K, V (B, H, L, dh) -> the projected output (B, d)."""
        p = attn.attn_dropout.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, K, V, dropout_p=p, scale=attn.scaling)
        return attn.resid_dropout(attn.c_proj(out.reshape(q.shape[0], -1)))

    def _init_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
        return ()  # no layer has keys yet

    def _step_cached(self, x: torch.Tensor, t: int, layers: tuple, memory_kv) -> tuple[torch.Tensor, tuple]:
        self._check_length(t + 1)
        g, d = self.gpt2, self.hidden_size
        h = g.drop(self.proj(x) + g.wpe.weight[t])
        new = []
        for i, block in enumerate(g.h):
            q, k, v = block.attn.c_attn(block.ln_1(h)).split(d, dim=-1)
            k, v = self._heads(k), self._heads(v)
            if layers:
                k, v = torch.cat([layers[i][0], k], dim=2), torch.cat([layers[i][1], v], dim=2)
            new.append((k, v))
            h = h + self._attention(block.attn, self._heads(q), k, v)
            if memory_kv is not None:
                cross = block.crossattention
                h = h + self._attention(cross, self._heads(cross.q_attn(block.ln_cross_attn(h))), *memory_kv[i])
            h = h + block.mlp(block.ln_2(h))
        return g.ln_f(h), tuple(new)
