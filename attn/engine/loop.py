"""One training epoch and one evaluation pass, shared by every task and model.

Metrics are accumulated as sums in device tensors (no host sync per batch) and reduced over DDP ranks
once at the end of the pass, so the printed numbers cover the whole split, not rank 0's shard.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from attn.data.base import BatchLoader, TaskData
from attn.losses import hybrid_loss


def _all_reduce(sums: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sums = sums.clone()
        dist.all_reduce(sums)
    return sums


def train_epoch(
    model: nn.Module,
    loader: BatchLoader,
    data: TaskData,
    optimizer: torch.optim.Optimizer,
    *,
    rl_coef: float,
    device: torch.device,
    grad_clip: Optional[float] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``; return mean loss terms, accuracy and images/s over all ranks."""
    model.train()
    # sums: loss, nll, baseline, reinforce, correct, count
    sums = torch.zeros(6, dtype=torch.float64, device=device)
    start = time.perf_counter()
    n_batches = len(loader)
    for i, (images, labels, _ids) in enumerate(loader):
        x = data.normalize(images.to(device, non_blocking=True))
        y = labels.to(device, non_blocking=True)
        terms = hybrid_loss(model(x), y, rl_coef)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        b = y.shape[0]
        with torch.no_grad():
            sums += torch.stack(
                [
                    terms.total.detach() * b,
                    terms.nll.detach() * b,
                    terms.baseline.detach() * b,
                    terms.reinforce.detach() * b,
                    terms.correct.sum(),
                    torch.tensor(b, device=device),
                ]
            ).to(sums.dtype)
        if progress is not None:
            progress(i + 1, n_batches)
    elapsed = time.perf_counter() - start
    total = _all_reduce(sums).tolist()
    count = max(total[5], 1.0)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    acc = total[4] / count
    return {
        "loss": total[0] / count,
        "nll": total[1] / count,
        "baseline_mse": total[2] / count,
        "reinforce": total[3] / count,
        "accuracy": acc,
        "error": 100.0 * (1.0 - acc),
        # every rank trained on its own shard in the same wall time
        "images_per_s": count / elapsed if elapsed > 0 else math.nan,
        "epoch_time_s": elapsed,
        "workers": world,
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: BatchLoader,
    data: TaskData,
    *,
    device: torch.device,
    policy: str = "mean",
    mc_samples: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Classification NLL, accuracy and error (%) of ``model`` on ``loader``'s split.

    policy="mean" runs the mean action mu_t (deterministic given ``seed``, which fixes l_0);
    policy="sample" with ``mc_samples`` = M runs M sampled episodes per image and averages the
    class log-probabilities over them (log-mean over copies: the geometric mean of probabilities),
    then takes the argmax.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed + 7919 * loader.rank)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll, correct, count
    for images, labels, _ids in loader:
        x = data.normalize(images.to(device))
        y = labels.to(device)
        m = mc_samples if policy == "sample" else 1
        xm = x.repeat(m, 1, 1, 1) if m > 1 else x
        log_probs = model(xm, policy=policy, generator=generator).log_probs
        if m > 1:
            log_probs = log_probs.view(m, x.shape[0], -1).mean(0)
        nll = torch.nn.functional.nll_loss(log_probs, y, reduction="sum")
        correct = (log_probs.argmax(-1) == y).sum()
        sums += torch.stack([nll, correct.to(nll.dtype), torch.tensor(float(y.shape[0]), device=device)]).to(
            sums.dtype
        )
    model.train(was_training)
    total = _all_reduce(sums).tolist()
    count = max(total[2], 1.0)
    acc = total[1] / count
    return {"nll": total[0] / count, "accuracy": acc, "error": 100.0 * (1.0 - acc), "count": total[2]}
