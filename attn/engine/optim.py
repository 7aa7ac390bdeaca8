"""Optimizers and learning-rate schedules built from :class:`~attn.config.TrainConfig`."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from attn.config import TrainConfig


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def no_decay(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Whether weight decay must leave ``param`` (``module``'s own parameter ``name``) alone.

    Decay pulls a parameter towards 0, which is a prior only for weight matrices and kernels. Biases,
    normalisation gains and shifts, and other per-unit offsets set a starting point that 0 would
    destroy: GTrXL's gate bias b_g (2: the near-identity start), Transformer-XL's u and v (2-D, per
    head). A module lists such names in a ``no_weight_decay`` attribute; every 1-D parameter is one too.
    """
    return (
        isinstance(module, _NORMS)
        or name == "bias"
        or param.ndim < 2
        or name in getattr(module, "no_weight_decay", ())
    )


def reinforce_only(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` (or of the model a DDP wrapper holds) that only the REINFORCE term trains."""
    model = getattr(model, "module", model)
    return list(model.reinforce_only()) if hasattr(model, "reinforce_only") else []


def param_groups(model: nn.Module, weight_decay: float, lr: float = 1.0, policy_lr_scale: float = 1.0) -> list[dict]:
    """The trainable parameters in optimizer groups: ``weight_decay`` for weight matrices and kernels, 0
    for the parameters :func:`no_decay` names; with ``policy_lr_scale`` != 1 the parameters of
    :func:`reinforce_only` modules form two more such groups at ``lr * policy_lr_scale``. Each
    parameter appears once (shared ones too)."""
    policy = {id(p) for m in reinforce_only(model) for p in m.parameters()} if policy_lr_scale != 1.0 else set()
    seen: set[int] = set()
    decay, keep, policy_decay, policy_keep = [], [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) in policy:
                (policy_keep if no_decay(module, name, p) else policy_decay).append(p)
            else:
                (keep if no_decay(module, name, p) else decay).append(p)
    slow = lr * policy_lr_scale
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0},
              {"params": policy_decay, "weight_decay": weight_decay, "lr": slow},
              {"params": policy_keep, "weight_decay": 0.0, "lr": slow}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.lr, cfg.policy_lr_scale)
    params = [p for g in groups for p in g["params"]]
    on_cpu = all(p.device.type == "cpu" for p in params)
    # The fused kernels update all tensors in one pass (about 4x faster than foreach on CPU here), and
    # skip a step on the device when it is not finite (NonFiniteGuard).
    fused = {"fused": True} if on_cpu or all(p.is_cuda for p in params) else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, **fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, **fused)
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


def fit_schedule_to(scheduler, epochs: int) -> None:
    """After a resume with another ``train.epochs``: a cosine schedule spans the new length from the
    epoch reached (its learning rate now is the new cosine's there, falling to the minimum at the new
    last epoch) instead of rising again past its old end. Other schedules do not depend on it."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) or scheduler.T_max == epochs:
        return
    scheduler.T_max = epochs
    t = scheduler.last_epoch
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * t / epochs)) / 2
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
