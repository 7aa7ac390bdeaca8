"""Location policy pi(l_t | h_t), baseline b_t and classifier heads of RAM.

- Emission net: mu_t = tanh(Linear(ReLU(Linear(h_t -> d/2)) -> 2)), policy N(mu_t, sigma^2 I) with a
  sigma that is no parameter (``policy_std``; training may lower it epoch by epoch:
  :func:`policy_std_at`). The sampled location is detached: the classification loss never reaches mu
  through the sensor; only REINFORCE, through log pi, trains the emission net.
- Baseline: b_t = Linear(h_t -> 1), no output nonlinearity, reading a detached state.
- Classifier: log_softmax(Linear(h_T -> classes)).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class LocationNetwork(nn.Module):
    """h_t (B, d) -> mu_t (B, 2) in (-1, 1)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        mid = max(hidden_size // 2, 1)
        self.fc = nn.Linear(hidden_size, mid)
        self.mu = nn.Linear(mid, 2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mu(F.relu(self.fc(h))))


def gaussian_log_prob(sample: torch.Tensor, mu: torch.Tensor, std: float) -> torch.Tensor:
    """log N(sample; mu, std^2 I), summed over the last (coordinate) axis: (..., 2) -> (...)."""
    z = (sample - mu) / std
    return (-0.5 * z.pow(2) - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def policy_std_at(start: float, final: Optional[float], epoch: int, epochs: int) -> float:
    """sigma of training epoch ``epoch`` (0-based) of ``epochs``: a cosine from ``start`` at the first
    epoch to ``final`` at the last; ``start`` throughout when ``final`` is None. Epochs past the
    last (a run resumed with more epochs) keep ``final``."""
    if final is None:
        return start
    progress = min(epoch / max(epochs - 1, 1), 1.0)
    return final + (start - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class BaselineNetwork(nn.Module):
    """h_t (..., d) -> b_t (...): the learned control variate for REINFORCE."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h).squeeze(-1)


class Classifier(nn.Module):
    """h (B, d) -> class log-probabilities (B, classes)."""

    def __init__(self, hidden_size: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.fc(h), dim=-1)
