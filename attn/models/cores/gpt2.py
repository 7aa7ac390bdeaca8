"""GPT-2 core: ``transformers.GPT2Model`` (Radford et al. 2019) built from a local config, fed
``inputs_embeds`` (no token embedding, no hub access).

Pre-LN blocks x = x + Attn(LN(x)); x = x + MLP(LN(x)) with causal multi-head attention, learned absolute
positions p_t added to the (projected) glimpse vector, GELU MLP of inner width ``inner_size``, a final
LN. ``step`` feeds one position and the key/value cache of the earlier steps (one layer pass per step);
the state carries the per-layer (K, V) tensors, each (B, H, t, d / H), and the position t. A fresh
``DynamicCache`` is built from those tensors every step, so a state is never mutated after it is returned.

With ``cross_attention`` (GPT2Config.add_cross_attention) every block also attends to a memory
(B, M, d) passed as ``encoder_hidden_states``; its keys/values are recomputed each step (the
per-step cache holds only self-attention), which keeps the state a plain tuple.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch
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
        from transformers import DynamicCache, GPT2Config, GPT2Model  # slow import: only when used

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
            activation_function="gelu_new",
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
        self._cache_cls = DynamicCache
        # transformers 5.x renamed past_key_values -> cache (the old name still works, with a warning).
        params = inspect.signature(GPT2Model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

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

    def _init_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
        return ()  # no layer has keys yet

    def _step_cached(self, x: torch.Tensor, t: int, layers: tuple, memory_kv) -> tuple[torch.Tensor, tuple]:
        self._check_length(t + 1)
        cache = self._cache_cls(ddp_cache_data=layers) if layers else self._cache_cls()
        pos = torch.full((1, 1), t, dtype=torch.long, device=x.device)
        out = self.gpt2(
            inputs_embeds=self.proj(x)[:, None],
            position_ids=pos,
            encoder_hidden_states=memory_kv,  # the raw memory (see the module docstring)
            use_cache=True,
            **{self._cache_kw: cache},
        )
        new = getattr(out, "cache", None)
        if new is None:
            new = out.past_key_values
        new = getattr(new, "self_attention_cache", new)  # with cross-attention: an EncoderDecoderCache
        return out.last_hidden_state[:, 0], tuple((layer.keys, layer.values) for layer in new.layers)
