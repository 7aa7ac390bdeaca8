"""Attention models. Model code knows nothing of Ray or MLflow."""

from __future__ import annotations

from torch import nn

from attn.config import ModelConfig
from attn.data.base import DataSpec


def build_model(cfg: ModelConfig, spec: DataSpec, input_norm: tuple[float, float] = (0.0, 1.0)) -> nn.Module:
    """The model named by ``model.name`` for a dataset described by ``spec``; ``input_norm``: the
    (mean, std) its images are normalised with (pretrained context backbones undo it)."""
    if cfg.name == "ram":
        from attn.models.ram import RAM

        return RAM(cfg, spec)
    if cfg.name == "dram":
        from attn.models.dram import DRAM

        if not spec.is_sequence:
            raise ValueError("dram reads label sequences; this dataset has one label per image")
        return DRAM(cfg, spec, input_norm)
    raise ValueError(f"unknown model {cfg.name!r}")  # pragma: no cover - the schema admits only these
