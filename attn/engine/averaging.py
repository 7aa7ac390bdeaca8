"""``train.ema_decay``: an exponential moving average of the weights (Polyak averaging), which the run
validates, keeps as its best weights and tests.

After every optimizer step t = 1, 2, ... (theta: the live weights, theta_bar: the average):

    beta_t    = min(beta, (1 + t) / (10 + t))         beta = train.ema_decay
    theta_bar = theta_bar + (1 - beta_t) (theta - theta_bar)

The warm-up of beta_t keeps the first steps from anchoring the average at the initial weights.
Buffers (batch-norm statistics) are copied, not averaged. The update is one ``_foreach_lerp_`` on the
device, so a step still reads nothing back on the host; ``torch.optim.swa_utils.AveragedModel``
would compare its step counter on the host at every update (a synchronisation per step on a GPU).
Under DDP every rank averages the same (already all-reduced) weights, so the averages stay equal.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """theta_bar of ``source``'s trainable parameters, held in ``model``, a copy of ``source`` that
    evaluation runs (in eval mode; no gradients)."""

    def __init__(self, source: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay = {decay}: expected a value between 0 and 1, e.g. 0.999")
        self.source, self.decay, self.steps = source, decay, 0
        self.model = copy.deepcopy(source).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        pairs = [(a, p) for a, p in zip(self.model.parameters(), source.parameters()) if p.requires_grad]
        self._averaged, self._live = [a for a, _ in pairs], [p for _, p in pairs]
        frozen = [(a, p) for a, p in zip(self.model.parameters(), source.parameters()) if not p.requires_grad]
        self._copied = frozen + list(zip(self.model.buffers(), source.buffers()))

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average again at the source's weights (after loading other weights into it)."""
        self.model.load_state_dict(self.source.state_dict())
        self.steps = 0

    def beta(self) -> float:
        """beta_t of the next update."""
        t = self.steps + 1
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self) -> None:
        """One update after an optimizer step (module docstring)."""
        weight = 1.0 - self.beta()
        self.steps += 1
        if self._averaged:
            torch._foreach_lerp_(self._averaged, self._live, weight)
        for mine, theirs in self._copied:
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.steps = int(state["steps"])


__all__ = ["WeightAverage"]
