"""Attention models. Model code knows nothing of Ray or MLflow."""

from __future__ import annotations

from torch import nn

from attn.config import ModelConfig
from attn.data.base import DataSpec


def build_model(cfg: ModelConfig, spec: DataSpec) -> nn.Module:
    """The model named by ``model.name`` for a dataset described by ``spec``."""
    if cfg.name == "ram":
        from attn.models.ram import RAM

        return RAM(cfg, spec)
    if cfg.name == "dram":
        from attn.models.dram import DRAM

        if not spec.is_sequence:
            raise ValueError("dram reads label sequences; this dataset has one label per image")
        return DRAM(cfg, spec)
    raise ValueError(f"unknown model {cfg.name!r}")  # pragma: no cover - the schema admits only these
