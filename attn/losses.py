"""The hybrid objective of RAM (Mnih et al. 2014):

    L = L_cls + L_base + lambda * L_RL

    L_cls  = NLL of the true class under log p(y | x) from h_T                      (mean over B)
    L_base = mean over (B, steps) of (b_t - R)^2                                     baseline regression
    L_RL   = mean over B of sum_t -log pi(l_t) * (R - b_t.detach())                  REINFORCE

with reward R = 1[argmax log p(y | x) = y] of the sampled episode. The baseline is a control variate:
detaching it in L_RL keeps REINFORCE unbiased; R is a constant (no gradient). A negative total loss is
normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


def reinforce_loss(
    log_pi: torch.Tensor,
    reward: torch.Tensor,
    baselines: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """REINFORCE with a baseline: mean over the batch of sum_t -log pi_t * (R - b_t).

    Args:
        log_pi: (B, S) log-probabilities of the actions taken.
        reward: (B,) episode reward R (treated as a constant).
        baselines: (B, S) b_t (treated as constants here).
        mask: optional (B, S) bool, True where step t's action was used.
    """
    advantage = reward.detach()[:, None] - baselines.detach()
    terms = -log_pi * advantage
    if mask is not None:
        terms = terms * mask
    return terms.sum(dim=1).mean()


def baseline_loss(baselines: torch.Tensor, reward: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error of b_t against R over the valid steps; 0 when there are none."""
    err = (baselines - reward.detach()[:, None]).pow(2)
    if mask is None:
        return err.mean() if err.numel() else err.sum()
    return (err * mask).sum() / mask.sum().clamp_min(1)


@dataclass
class LossTerms:
    """The total loss to backpropagate and its parts (all 0-d tensors), plus per-sample results."""

    total: torch.Tensor
    nll: torch.Tensor
    baseline: torch.Tensor
    reinforce: torch.Tensor
    correct: torch.Tensor  # (B,) bool


def hybrid_loss(episode, targets: torch.Tensor, rl_coef: float) -> LossTerms:
    """L = NLL + MSE(b, R) + rl_coef * REINFORCE for a RAM :class:`~attn.models.ram.Episode`."""
    nll = F.nll_loss(episode.log_probs, targets)
    correct = episode.log_probs.argmax(dim=-1) == targets
    reward = correct.to(episode.log_probs.dtype)
    base = baseline_loss(episode.baselines, reward)
    rl = reinforce_loss(episode.log_pi, reward, episode.baselines)
    return LossTerms(nll + base + rl_coef * rl, nll, base, rl, correct)
