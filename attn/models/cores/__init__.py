"""Cores by name: :func:`build_core` maps ``model.core.kind`` to a :class:`Core`."""

from __future__ import annotations

from attn.config import CoreConfig
from attn.models.cores.base import Core
from attn.models.cores.rnn import LSTMCore, RNNCore


def build_core(cfg: CoreConfig, input_size: int, hidden_size: int) -> Core:
    if cfg.kind == "rnn":
        return RNNCore(input_size, hidden_size)
    if cfg.kind == "lstm":
        return LSTMCore(input_size, hidden_size)
    raise ValueError(f"unknown core {cfg.kind!r}")  # pragma: no cover - the schema admits only these


__all__ = ["Core", "build_core"]
