"""The one adapter from the schema to the models: every model, core and context network is built here
from its config variant (:mod:`attn.config.model`); the model classes take plain arguments and parts.

Parts are made in a fixed order (retina, glimpse network, context, cores, heads), so that a seed gives
the same initial weights as ever.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from attn.config import ContextBase, CoreBase, DramConfig, ModelBase, RamConfig
from attn.data.base import DataSpec
from attn.errors import ConfigError
from attn.models.context import ContextCNN, NoContext, ResNet50Context, SnapshotContext, ViTContext, check_weights
from attn.models.cores import Core
from attn.models.cores.rnn import LSTMCore, RNNCore
from attn.models.glimpse import ConvGlimpseNetwork, GlimpseNetwork
from attn.models.retina import Retina


def build_model(cfg: ModelBase, spec: DataSpec, input_norm: tuple[float, float] = (0.0, 1.0)) -> nn.Module:
    """The model ``cfg`` names for a dataset described by ``spec``; ``input_norm``: the (mean, std) its
    images are normalised with (pretrained context backbones undo it)."""
    if isinstance(cfg, RamConfig):
        return _ram(cfg, spec)
    if isinstance(cfg, DramConfig):
        return _dram(cfg, spec, input_norm)
    raise ValueError(f"unknown model {cfg.name!r}")  # pragma: no cover - the schema admits only these


def evaluation_std(cfg: ModelBase) -> float:
    """The sigma a built model samples with: the last epoch's (``policy_std_final``) when sigma
    decays in training (each training epoch sets its own), else ``policy_std``."""
    return cfg.policy_std if cfg.policy_std_final is None else cfg.policy_std_final


def _retina(cfg: ModelBase) -> Retina:
    r = cfg.retina
    return Retina(r.patch_size, r.num_scales, r.scale, r.pad_value)


def _ram(cfg: RamConfig, spec: DataSpec):
    from attn.models.ram import RAM

    r, d = cfg.retina, cfg.hidden_size
    retina = _retina(cfg)
    glimpse = GlimpseNetwork(r.num_scales * spec.channels * r.patch_size**2, cfg.what_size, cfg.where_size, d)
    core = build_core(cfg.core, d, d, max_steps=cfg.num_glimpses)
    return RAM(
        retina, glimpse, core, num_classes=spec.num_classes, hidden_size=d, num_glimpses=cfg.num_glimpses,
        policy_std=evaluation_std(cfg), initial_location=cfg.initial_location,
        detach_policy_input=cfg.routing == "detached", mean_readout=cfg.readout == "mean",
        two_phase=getattr(cfg.core, "rollout", "stepwise") == "two_phase",
    )


def _dram(cfg: DramConfig, spec: DataSpec, input_norm: tuple[float, float]):
    from attn.models.dram import DRAM

    r, d = cfg.retina, cfg.hidden_size
    rgb = cfg.glimpse_color == "rgb"
    if rgb and spec.channels != 3:
        raise ValueError(f"model.glimpse_color = 'rgb' needs 3-channel images, this dataset has {spec.channels}")
    retina = _retina(cfg)
    glimpse = ConvGlimpseNetwork(r.num_scales * (spec.channels if rgb else 1), r.patch_size, cfg.conv_channels, d,
                                 cfg.fusion)
    context = build_context(cfg.context, spec.channels, spec.height, spec.width, d, input_norm)
    reads_memory = cfg.context.kind == "vit"
    query = nn.Parameter(torch.randn(d) * 0.02) if reads_memory else None
    glimpses = spec.max_tokens * cfg.steps_per_token()
    lower = build_core(cfg.core, d, d, max_steps=glimpses + int(reads_memory))
    upper = build_core(cfg.core, d, d, max_steps=glimpses + 1, cross_attention=reads_memory)
    return DRAM(
        retina, glimpse, context, lower, upper, num_classes=spec.num_classes, max_tokens=spec.max_tokens,
        hidden_size=d, explore_steps=cfg.explore_steps, glimpses_per_digit=cfg.glimpses_per_digit,
        policy_std=evaluation_std(cfg), routing=cfg.routing, rgb_glimpses=rgb, query=query,
        classify=not spec.is_sequence,
    )


def build_core(
    cfg: CoreBase,
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


def check_context_files(cfg: ContextBase) -> None:
    """Fail in one line when a weights file or config the context names is missing."""
    check_weights(cfg.kind, getattr(cfg, "weights", None), getattr(cfg, "vit_config", None))


def build_context(
    cfg: ContextBase, channels: int, height: int, width: int, out_size: int, input_norm: tuple[float, float] = (0.0, 1.0)
) -> nn.Module:
    """The context network of ``cfg.kind``. input_norm: the (mean, std) the images were normalised with."""
    if cfg.kind == "cnn":
        return ContextCNN(channels, height, width, out_size, stride=cfg.stride_for(min(height, width)))
    if cfg.kind == "snapshot":
        return SnapshotContext(channels, out_size, cfg.snapshot_size, stride=cfg.stride_for(cfg.snapshot_size))
    if cfg.kind == "resnet50":
        return ResNet50Context(out_size, cfg.weights, input_norm)
    if cfg.kind == "vit":
        return ViTContext(out_size, cfg.weights, cfg.vit_config, input_norm)
    if cfg.kind == "none":
        return NoContext(out_size)
    raise ValueError(f"unknown context {cfg.kind!r}")  # pragma: no cover - the schema admits only these
