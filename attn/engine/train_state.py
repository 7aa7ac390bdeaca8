"""What a training run carries from one epoch to the next, and what its checkpoint holds.

A checkpoint (:mod:`attn.engine.checkpoint`) is ``state.pt`` with the model, optimizer and scheduler
state (and the weight average, with ``train.ema_decay``) and the progress below, ``best_model.pt``
with the best weights so far, and the config.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from attn.engine.averaging import WeightAverage
from attn.engine.checkpoint import load_checkpoint, save_checkpoint
from attn.errors import CheckpointError


@dataclass
class TrainState:
    """model, optimizer, scheduler: the live objects (restored in place). epoch: the last finished
    epoch (-1 before the first). best_error, best_epoch, best_weights: the best validation error (%)
    so far, its epoch and a copy of those weights. early_stopped: patience ran out. history: every
    epoch's logged metrics, so that after a restart the tracker receives each epoch exactly once.
    average: the weight average (``train.ema_decay``), which is then what is validated and kept as the
    best weights."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[Any]
    precision: Optional[Any] = None  # attn.engine.precision.Precision: its loss scale (fp16) is state too
    epoch: int = -1
    best_error: float = math.inf
    best_epoch: int = -1
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    early_stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    average: Optional[WeightAverage] = None

    def __post_init__(self) -> None:
        if not self.best_weights:
            self.best_weights = copy.deepcopy(self.eval_model.state_dict())

    @property
    def eval_model(self) -> nn.Module:
        """The weights a run validates and keeps: the average when there is one, else the model."""
        return self.average.model if self.average is not None else self.model

    @property
    def next_epoch(self) -> int:
        return self.epoch + 1

    def end_epoch(self, epoch: int, val_error: float, patience: int) -> bool:
        """Record a finished epoch's validation error, keeping the weights when it is the best so far
        (ties go to the later epoch); True when more than ``patience`` epochs passed since the best."""
        self.epoch = epoch
        if val_error <= self.best_error:
            self.best_error, self.best_epoch = val_error, epoch
            self.best_weights = copy.deepcopy(self.eval_model.state_dict())
        self.early_stopped = epoch - self.best_epoch > patience
        return self.early_stopped

    def save(self, folder: str | Path, config_yaml: str) -> Path:
        """Write the checkpoint into ``folder``; returns its directory."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.precision.state_dict() if self.precision is not None else None,
            "average": self.average.state_dict() if self.average is not None else None,
            "epoch": self.epoch,
            "best_error": self.best_error,
            "best_epoch": self.best_epoch,
            "early_stopped": self.early_stopped,
            "history": self.history,
        }
        return save_checkpoint(folder, state, self.best_weights, config_yaml)

    def restore(self, folder: str | Path, config_yaml: str) -> None:
        """Continue from the checkpoint in ``folder`` (written with the same ``config_yaml``)."""
        state, self.best_weights = load_checkpoint(folder, expected_config=config_yaml)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.precision is not None:
                self.precision.load_state_dict(state.get("scaler"))
            if self.average is not None and state.get("average"):
                self.average.load_state_dict(state["average"])
            elif self.average is not None:  # a checkpoint made without train.ema_decay: start at its weights
                self.average.reset()
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{folder}: checkpoint does not fit this config ({str(exc).splitlines()[0][:200]})"
            ) from None
        self.epoch, self.best_error, self.best_epoch = state["epoch"], state["best_error"], state["best_epoch"]
        self.history = list(state.get("history", []))
        # A finished run resumed with more epochs (train.epochs=N on --resume) trains on, unless it
        # had stopped early.
        self.early_stopped = bool(state.get("early_stopped"))
