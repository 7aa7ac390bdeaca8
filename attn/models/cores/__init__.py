"""Cores by name: :func:`build_core` maps ``model.core.kind`` to a :class:`Core`.

rnn, lstm: :mod:`attn.models.cores.rnn`; gpt2: :mod:`.gpt2`; trxl: :mod:`.trxl`; gtrxl: :mod:`.gtrxl`.
"""

from __future__ import annotations

from typing import Optional

from attn.config import CoreConfig
from attn.errors import ConfigError
from attn.models.cores.base import Core, SequenceCore, TransformerState
from attn.models.cores.rnn import LSTMCore, RNNCore


def build_core(
    cfg: CoreConfig,
    input_size: int,
    hidden_size: int,
    max_steps: Optional[int] = None,
    cross_attention: bool = False,
) -> Core:
    """The core for ``cfg.kind``: g_t (input_size) -> h_t (hidden_size = d).

    cross_attention: Transformer cores only: every layer also reads a memory (B, M, d) given to
    ``init_state`` / ``forward_sequence`` (DRAM's ViT context).

    max_steps: the most steps an episode takes (RAM: num_glimpses); sizes gpt2's learned positions
    (n_positions defaults to it and must not be smaller). Recurrent cores ignore it.
    Raises :class:`ConfigError` (one line naming the key) when the options do not fit the widths.
    """
    try:
        cfg.check_against(hidden_size, max_steps)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cross_attention and cfg.kind not in ("gpt2", "trxl", "gtrxl"):
        raise ConfigError(f"model.core.kind = {cfg.kind!r} has no cross-attention; use gpt2, trxl or gtrxl")
    if cfg.kind == "rnn":
        return RNNCore(input_size, hidden_size)
    if cfg.kind == "lstm":
        return LSTMCore(input_size, hidden_size)
    common = dict(
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        inner_size=cfg.inner_size,
        dropout=cfg.dropout,
        use_cache=cfg.use_cache,
        cross_attention=cross_attention,
    )
    if cfg.kind == "gpt2":
        from attn.models.cores.gpt2 import GPT2Core

        n_positions = cfg.n_positions or max_steps or 1024
        return GPT2Core(input_size, hidden_size, n_positions=n_positions, **common)
    if cfg.kind == "trxl":
        from attn.models.cores.trxl import TrXLCore

        return TrXLCore(
            input_size, hidden_size, head_dim=cfg.head_dim, memory_length=cfg.memory_length, norm=cfg.norm, **common
        )
    if cfg.kind == "gtrxl":
        from attn.models.cores.gtrxl import GTrXLCore

        return GTrXLCore(
            input_size,
            hidden_size,
            head_dim=cfg.head_dim,
            memory_length=cfg.memory_length,
            gate_bias=cfg.gate_bias,
            **common,
        )
    raise ValueError(f"unknown core {cfg.kind!r}")  # pragma: no cover - the schema admits only these


__all__ = ["Core", "SequenceCore", "TransformerState", "build_core"]
