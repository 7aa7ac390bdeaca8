"""The hybrid objective of RAM (Mnih et al. 2014) and DRAM (Ba et al. 2015):

    L = L_cls + L_base + lambda * L_RL

    L_cls  = NLL of the true label                                                   classification
    L_base = mean over the valid steps of (b_t - R)^2                                baseline regression
    L_RL   = mean over B of sum over the valid steps of -log pi(l_t) * (R - b_t.detach())   REINFORCE

RAM (:func:`hybrid_loss`): L_cls from h_T, reward R = 1[argmax log p(y | x) = y], every step valid.
DRAM (:func:`sequence_hybrid_loss`): the label is a token sequence ending in the end token. A sequence
runs while its tokens are read correctly: slot j is *active* if every earlier token was right and none
was the end token. R = the number of leading tokens read correctly (end included); L_cls averages the
token NLL over the active slots (up to and including the first mistake), or over every label slot
(``all_tokens``: the likelihood of the whole label, so that later slots learn while the first is
still mostly wrong); a step is valid when its glimpse belongs to an active slot. Masks, never
sentinel values, select what counts.

The baseline is a control variate: detaching it in L_RL keeps REINFORCE unbiased; R is a constant (no
gradient). A negative total loss is normal.
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
    """The total loss to backpropagate and its parts (all 0-d tensors), plus per-sample results.

    correct: (B,) bool, the whole label read correctly. reward: (B,) R of each episode.
    glimpses: (B,) glimpses that counted (all T for RAM; those of active slots for DRAM).
    tokens_correct, tokens: (B,) label tokens read right, and label tokens (1 and 1 for RAM).
    """

    total: torch.Tensor
    nll: torch.Tensor
    baseline: torch.Tensor
    reinforce: torch.Tensor
    correct: torch.Tensor
    reward: torch.Tensor
    glimpses: torch.Tensor
    tokens_correct: torch.Tensor
    tokens: torch.Tensor


def hybrid_loss(episode, targets: torch.Tensor, rl_coef: float) -> LossTerms:
    """L = NLL + MSE(b, R) + rl_coef * REINFORCE for a RAM :class:`~attn.models.ram.Episode`."""
    nll = F.nll_loss(episode.log_probs, targets)
    correct = episode.log_probs.argmax(dim=-1) == targets
    reward = correct.to(episode.log_probs.dtype)
    base = baseline_loss(episode.baselines, reward)
    rl = reinforce_loss(episode.log_pi, reward, episode.baselines)
    glimpses = torch.full_like(reward, float(episode.locations.shape[1]))
    ones = torch.ones_like(reward)
    return LossTerms(nll + base + rl_coef * rl, nll, base, rl, correct, reward, glimpses, reward, ones)


@dataclass
class SequenceOutcome:
    """How a batch of predicted sequences compares with the labels (B = batch, L = slots).

    valid: (B, L) the slot holds a label token. token_correct: (B, L) valid and predicted right.
    active: (B, L) the sequence is still running at slot j: tokens 0..j-1 right, none of them the end.
    reward: (B,) R = leading tokens right, end included. correct: (B,) every token right (R = length).
    """

    valid: torch.Tensor
    token_correct: torch.Tensor
    active: torch.Tensor
    reward: torch.Tensor
    correct: torch.Tensor


def sequence_outcome(pred: torch.Tensor, targets: torch.Tensor, end_token: int) -> SequenceOutcome:
    """Score predicted tokens ``pred`` (B, L) against ``targets`` (B, L) padded with IGNORE_INDEX.

    Targets must hold their end token within the L slots, so no sequence can count as correct
    while still running after the last slot.
    """
    valid = targets >= 0
    token_correct = (pred == targets) & valid
    go_on = token_correct & (targets != end_token)  # running after slot j
    active = torch.cat([torch.ones_like(go_on[:, :1]), go_on[:, :-1]], dim=1).cumprod(dim=1).bool()
    reward = (active & token_correct).sum(dim=1)
    correct = reward == valid.sum(dim=1)
    return SequenceOutcome(valid, token_correct, active, reward, correct)


def sequence_hybrid_loss(episode, targets: torch.Tensor, rl_coef: float, end_token: int,
                         all_tokens: bool = False) -> LossTerms:
    """L = NLL + MSE(b, R) + rl_coef * REINFORCE for a DRAM :class:`~attn.models.dram.SequenceEpisode`.

    targets: (B, L') int64 tokens padded with IGNORE_INDEX; the episode's L slots must cover every
    label (L' > L only with padding). all_tokens: L_cls over every label token, not only the active
    slots (REINFORCE and the baseline keep the active slots' glimpses either way).
    """
    L = episode.log_probs.shape[1]
    y = targets[:, :L]
    out = sequence_outcome(episode.log_probs.argmax(dim=-1), y, end_token)
    counted = out.valid if all_tokens else out.active & out.valid
    token_nll = -episode.log_probs.gather(-1, y.clamp_min(0)[..., None]).squeeze(-1)
    nll = (token_nll * counted).sum() / counted.sum().clamp_min(1)
    reward = out.reward.to(episode.log_probs.dtype)
    step_mask = out.active[:, episode.step_slot]  # (B, G): the glimpse of an active slot used it
    base = baseline_loss(episode.baselines, reward, step_mask)
    rl = reinforce_loss(episode.log_pi, reward, episode.baselines, step_mask)
    glimpses = step_mask.sum(dim=1).to(reward.dtype)
    return LossTerms(
        nll + base + rl_coef * rl,
        nll,
        base,
        rl,
        out.correct,
        reward,
        glimpses,
        out.token_correct.sum(dim=1).to(reward.dtype),
        out.valid.sum(dim=1).to(reward.dtype),
    )
