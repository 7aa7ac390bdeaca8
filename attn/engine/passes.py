"""A pass over a split: one training epoch, one evaluation, a split's final scores; the same for
every task and model (what differs is the task's :class:`~attn.engine.objective.Objective`).

Metrics are accumulated as sums in device tensors and reduced over DDP ranks once at the end of the
pass, so the printed numbers cover the whole split, not rank 0's shard. Host syncs per batch: a
sequence batch's longest label (how many slots to run), and whether the gradient norm is finite
(whether to take the step).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from attn.data.base import BatchLoader, TaskData
from attn.engine.objective import EVAL_SUMS, objective_for
from attn.engine.split_stats import SplitStats
from attn.errors import TrainingDiverged


def _all_reduce(sums: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sums = sums.clone()
        dist.all_reduce(sums)
    return sums


class NonFiniteGuard:
    """Skips steps whose gradient norm is NaN/inf and stops after ``limit`` of them in a row.

    The norm is taken after DDP has averaged the gradients, so every rank sees the same value and
    skips the same steps (the replicas stay identical); a non-finite loss gives a non-finite gradient.
    """

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.skipped = limit, 0, 0

    def step_ok(self, grad_norm: torch.Tensor) -> bool:
        if bool(torch.isfinite(grad_norm)):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.limit:
            raise TrainingDiverged(
                f"{self.in_a_row} training steps in a row had a non-finite loss or gradient "
                f"(train.max_nonfinite_steps = {self.limit}); the last good checkpoint is kept: lower train.lr, "
                "set train.grad_clip, then continue with --resume"
            )
        return False


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def guarded_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, guard: NonFiniteGuard, grad_clip: Optional[float] = None
) -> bool:
    """After ``backward()``: clip (if asked), then take the optimizer step unless the gradient norm is
    NaN/inf (then drop the gradients). True if the step was taken."""
    if grad_clip is not None:
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = _grad_norm(model)
    if not guard.step_ok(norm):
        optimizer.zero_grad(set_to_none=True)
        return False
    optimizer.step()
    return True


# Per-pass sums, in this order.
_TRAIN_SUMS = ("loss", "nll", "baseline_mse", "reinforce", "correct", "reward", "glimpses", "tokens_correct", "tokens")


def train_epoch(
    model: nn.Module,
    loader: BatchLoader,
    data: TaskData,
    optimizer: torch.optim.Optimizer,
    *,
    rl_coef: float,
    device: torch.device,
    grad_clip: Optional[float] = None,
    nonfinite: Optional[NonFiniteGuard] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``; return mean loss terms, accuracy and images/s over all ranks.

    accuracy: share of images whose whole label was read right (the sequence accuracy for sequence
    tasks); token_accuracy: share of label tokens read right; reward: mean R; glimpses_per_image: the
    glimpses that counted (DRAM stops counting at a sequence's first mistake); nonfinite_steps: steps
    skipped because their loss or gradient was NaN/inf (they count in no other metric).
    """
    guard = nonfinite or NonFiniteGuard(limit=2**62)
    skipped_before = guard.skipped
    model.train()
    objective = objective_for(data.spec)
    sums = torch.zeros(len(_TRAIN_SUMS) + 1, dtype=torch.float64, device=device)  # + image count
    start = time.perf_counter()
    n_batches = len(loader)
    for i, (images, labels, ids) in enumerate(loader):
        x = data.model_input(images.to(device, non_blocking=True), train=True, ids=ids)
        y = labels.to(device, non_blocking=True)
        terms = objective.loss(model(x, **objective.slots(y)), y, rl_coef)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if not guarded_step(model, optimizer, guard, grad_clip):
            continue
        b = y.shape[0]
        with torch.no_grad():
            sums += torch.stack(
                [
                    terms.total.detach() * b,
                    terms.nll.detach() * b,
                    terms.baseline.detach() * b,
                    terms.reinforce.detach() * b,
                    terms.correct.sum(),
                    terms.reward.sum(),
                    terms.glimpses.sum(),
                    terms.tokens_correct.sum(),
                    terms.tokens.sum(),
                    torch.tensor(b, device=device),
                ]
            ).to(sums.dtype)
        if progress is not None:
            progress(i + 1, n_batches)
    elapsed = time.perf_counter() - start
    total = dict(zip(_TRAIN_SUMS + ("count",), _all_reduce(sums).tolist()))
    count = max(total["count"], 1.0)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    acc = total["correct"] / count
    out = {k: total[k] / count for k in ("loss", "nll", "baseline_mse", "reinforce")}
    out.update(
        accuracy=acc,
        error=100.0 * (1.0 - acc),
        # every rank trained on its own shard in the same wall time
        images_per_s=count / elapsed if elapsed > 0 else math.nan,
        epoch_time_s=elapsed,
        workers=world,
        nonfinite_steps=float(guard.skipped - skipped_before),
    )
    out.update(objective.train_extras(total, count))
    return out


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
    stats: Optional[SplitStats] = None,
) -> dict[str, float]:
    """NLL, accuracy and error (%) of ``model`` on ``loader``'s split (deterministic input: centre crops).

    policy="mean" runs the mean action mu_t (deterministic given ``seed``, which fixes RAM's l_0);
    policy="sample" with ``mc_samples`` = M runs M sampled episodes per image and averages the
    (token) log-probabilities over them (log-mean over copies: the geometric mean of probabilities),
    then takes the argmax. accuracy counts images whose whole label is right (sequence accuracy);
    sequence tasks add token_accuracy, digit_accuracy (end tokens excluded) and reward (leading
    tokens right). nll is per label token.
    """
    was_training = model.training
    model.eval()
    objective = objective_for(data.spec)
    generator = torch.Generator(device=device).manual_seed(seed + 7919 * loader.rank)
    sums = torch.zeros(len(EVAL_SUMS), dtype=torch.float64, device=device)
    for images, labels, ids in loader:
        x = data.model_input(images.to(device), train=False, ids=ids)
        y = labels.to(device)
        m = mc_samples if policy == "sample" else 1
        # copies=m: the model repeats the images itself, so a context network runs once per image
        episode = model(x, policy=policy, generator=generator, copies=m, **objective.slots(y))
        log_probs = episode.log_probs
        if stats is not None and m == 1:
            stats.add(episode.locations, log_probs, y)
        if m > 1:
            log_probs = log_probs.view(m, x.shape[0], *log_probs.shape[1:]).mean(0)
        sums += objective.score_batch(log_probs, y).to(sums.dtype)
    model.train(was_training)
    if stats is not None:
        stats.reduce()
    total = dict(zip(EVAL_SUMS, _all_reduce(sums).tolist()))
    count = max(total["count"], 1.0)
    acc = total["correct"] / count
    out = {
        "nll": total["nll"] / max(total["tokens"], 1.0),
        "accuracy": acc,
        "error": 100.0 * (1.0 - acc),
        "count": total["count"],
    }
    out.update(objective.eval_extras(total, count))
    return out


def score_split(
    model: nn.Module,
    loader: BatchLoader,
    data: TaskData,
    *,
    device: torch.device,
    prefix: str,
    mc_samples: int,
    seed: int = 0,
    stats: Optional[SplitStats] = None,
    single_sample: bool = False,
) -> dict[str, float]:
    """A split's final scores, as training runs and ``run.py eval`` log them: ``{prefix}_error`` and
    ``_nll`` by the mean policy (filling ``stats``), ``{prefix}_error_mc`` from ``mc_samples`` sampled
    episodes averaged, ``_error_sample`` from one sampled episode (if ``single_sample``), the
    sequence scores of both (``_token_accuracy``, ``_token_accuracy_mc``, ...), ``_mc_samples`` and
    ``_images``."""
    mean = evaluate(model, loader, data, device=device, policy="mean", seed=seed, stats=stats)
    mc = evaluate(model, loader, data, device=device, policy="sample", mc_samples=mc_samples, seed=seed)
    scores = {f"{prefix}_error": mean["error"], f"{prefix}_nll": mean["nll"]}
    if single_sample:
        one = evaluate(model, loader, data, device=device, policy="sample", mc_samples=1, seed=seed)
        scores[f"{prefix}_error_sample"] = one["error"]
    scores[f"{prefix}_error_mc"] = mc["error"]
    scores[f"{prefix}_mc_samples"] = mc_samples
    scores[f"{prefix}_images"] = mean["count"]
    for k in objective_for(data.spec).extra_scores:
        scores[f"{prefix}_{k}"] = mean[k]
        scores[f"{prefix}_{k}_mc"] = mc[k]
    return scores
