"""The core interface shared by RAM (and later DRAM): integrate one glimpse vector per step.

    state = core.init_state(batch_size, device, dtype)
    h_t, state = core.step(g_t, state)          # g_t: (B, input_size) -> h_t: (B, hidden_size)
    H = core.forward_sequence(G)                # G = (g_1..g_T): (B, T, input_size) -> H: (B, T, hidden_size)

``forward_sequence`` is one causal pass over a whole episode: H[:, t] depends on G[:, :t+1] only, and
equals the h_t that ``step`` returns at step t. States are explicit values passed in and out (never
buffers mutated inside ``forward``), so a core holds no per-episode state, runs on the input's device,
and gradients flow through the whole episode.

Transformer cores built with ``cross_attention`` also read a fixed memory M (B, M_len, d) (DRAM's ViT
tokens) by cross-attention in every layer: ``init_state(..., memory=M)``, ``forward_sequence(G, memory=M)``.

Transformer cores (:class:`SequenceCore`) carry a :class:`TransformerState`: with ``use_cache`` the
per-layer keys/values of the earlier steps (one layer pass per step: an episode of T steps does O(T)
layer passes, step t costs O(t)); without it the prefix G[:, :t] of inputs, re-run through
``forward_sequence`` every step (O(t^2) per step; for comparison and benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn


class Core(nn.Module):
    input_size: int
    hidden_size: int

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        """The state before the first glimpse (h_0 for recurrent cores, an empty cache for transformers)."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One step: x = g_t (B, input_size), state after t-1 steps -> (h_t (B, hidden_size), state after t)."""
        raise NotImplementedError

    def state_from_hidden(self, h0: torch.Tensor) -> Any:
        """Recurrent cores: the state whose hidden vector is h0 (B, hidden_size) (cell state 0), as DRAM's
        context network sets its top layer. Transformer cores have no such state: they take h0 as an input."""
        raise NotImplementedError

    def forward_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """All steps of an episode at once: x = (g_1..g_T) (B, T, input_size) -> (h_1..h_T) (B, T, hidden_size).

        The default loops over :meth:`step` (recurrent cores have nothing to parallelise over time).
        """
        state = self.init_state(x.shape[0], x.device, x.dtype)
        outs = []
        for t in range(x.shape[1]):
            h, state = self.step(x[:, t], state)
            outs.append(h)
        return torch.stack(outs, dim=1)


@dataclass(frozen=True)
class TransformerState:
    """State of a transformer core after ``t`` steps of an episode.

    t: steps taken so far (the next input is g_{t+1}, at 0-based position t).
    layers: use_cache=True: one tuple of tensors per layer (the key/value cache, which IS the memory of
        the episode), still attached to the autograd graph; () before the first step for gpt2.
    prefix: use_cache=False: the inputs so far, (B, t, input_size); None with the cache.
    memory: the cross-attention memory (B, M, d), or None.
    memory_kv: use_cache=True: what each layer derived from ``memory`` once per episode (its keys and
        values), so steps do not recompute them; None without memory.
    """

    t: int
    layers: tuple = ()
    prefix: Optional[torch.Tensor] = None
    memory: Optional[torch.Tensor] = None
    memory_kv: Any = None


class SequenceCore(Core):
    """Base of the causal transformer cores: ``step`` runs cached incremental steps or, with
    ``use_cache=False``, re-runs :meth:`forward_sequence` over the whole prefix.

    Subclasses implement :meth:`forward_sequence`, :meth:`_init_cache` and :meth:`_step_cached`.
    """

    use_cache: bool = True
    cross_attention: bool = False
    # whether h_t can depend on t itself: false for relative attention alone, whose outputs for T
    # identical inputs are identical at every step
    absolute_positions: bool = True

    def init_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype, memory: Optional[torch.Tensor] = None
    ) -> TransformerState:
        """The empty state; ``memory`` (B, M, d): what cross-attention reads for the whole episode."""
        if memory is not None and not self.cross_attention:
            raise ValueError("this core was built without cross_attention: it cannot read a memory")
        if self.use_cache:
            kv = self._memory_kv(memory) if memory is not None else None
            return TransformerState(0, self._init_cache(batch_size, device, dtype), memory=memory, memory_kv=kv)
        prefix = torch.zeros(batch_size, 0, self.input_size, device=device, dtype=dtype)
        return TransformerState(0, (), prefix, memory=memory)

    def step(self, x: torch.Tensor, state: TransformerState) -> tuple[torch.Tensor, TransformerState]:
        """x = g_{t+1}: (B, input_size) -> h_{t+1}: (B, hidden_size) and the state after t+1 steps."""
        if state.prefix is not None:
            prefix = torch.cat([state.prefix, x[:, None]], dim=1)
            h = self.forward_sequence(prefix, memory=state.memory)[:, -1]
            return h, TransformerState(state.t + 1, (), prefix, memory=state.memory)
        h, layers = self._step_cached(x, state.t, state.layers, state.memory_kv)
        return h, TransformerState(state.t + 1, layers, memory=state.memory, memory_kv=state.memory_kv)

    def forward_sequence(self, x: torch.Tensor, memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def _memory_kv(self, memory: torch.Tensor) -> Any:
        """Per-episode work on the memory that every step reuses (default: the memory itself)."""
        return memory

    def _init_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> tuple:
        raise NotImplementedError

    def _step_cached(self, x: torch.Tensor, t: int, layers: tuple, memory_kv: Any) -> tuple[torch.Tensor, tuple]:
        """x: (B, input_size) at 0-based position t; layers: the cache after t steps; memory_kv: from
        :meth:`_memory_kv` or None -> (h, new cache)."""
        raise NotImplementedError
