"""A pass over a split: one training epoch, one evaluation, a split's final scores; the same for
every task and model (what differs is the task's :class:`~attn.engine.objective.Objective`).

Metrics are accumulated as sums in device tensors and reduced over DDP ranks once at the end of the
pass, so the printed numbers cover the whole split, not rank 0's shard. A training step never reads
a device value on the host: a sequence batch's slot count comes from the labels before they move to
the device, and a non-finite step is skipped on the device (:class:`NonFiniteGuard`); the sums are
read once, at the end of the pass (tests/unit/engine/test_host_syncs.py counts the reads).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from attn.data.base import BatchLoader, TaskData
from attn.engine.averaging import WeightAverage
from attn.engine.objective import EVAL_SUMS, objective_for
from attn.engine.precision import Precision
from attn.engine.split_stats import SplitStats
from attn.errors import TrainingDiverged


def _all_reduce(sums: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sums = sums.clone()
        dist.all_reduce(sums)
    return sums


class NonFiniteGuard:
    """Skips steps whose gradient norm is NaN/inf and stops once ``limit`` of them came in a row.

    The norm is taken after DDP has averaged the gradients, so every rank sees the same value and
    skips the same steps (the replicas stay identical); a non-finite loss gives a non-finite gradient.
    The decision never waits for the host: the optimizer's fused kernel skips the update when its
    ``found_inf`` is set (as ``torch.amp.GradScaler`` does), and the counters are device tensors that
    :meth:`check` reads every ``check_every`` steps and at the end of each pass; a run of bad steps is
    therefore stopped at most min(``check_every``, ``limit``) steps after it reached ``limit``. Optimizers without a
    fused kernel fall back to a host decision per step.
    """

    def __init__(self, limit: int, check_every: int = 50):
        self.limit, self.check_every = limit, max(1, min(check_every, limit))
        self._in_a_row: Optional[torch.Tensor] = None  # () int64: bad steps since the last good one
        self._worst: Optional[torch.Tensor] = None  # () int64: the longest such run so far
        self._skipped: Optional[torch.Tensor] = None  # () int64: every skipped step
        self._since_check = 0

    def observe(self, grad_norm: torch.Tensor) -> torch.Tensor:
        """Count this step; returns found_inf, a () float tensor: 1.0 when the step must be skipped."""
        bad = ~torch.isfinite(grad_norm)
        if self._in_a_row is None:
            self._in_a_row, self._worst, self._skipped = (torch.zeros((), dtype=torch.int64, device=bad.device)
                                                          for _ in range(3))
        self._in_a_row = torch.where(bad, self._in_a_row + 1, 0)
        self._worst = torch.maximum(self._worst, self._in_a_row)
        self._skipped = self._skipped + bad
        self._since_check += 1
        if self._since_check >= self.check_every:
            self.check()
        return bad.to(torch.float32)

    def check(self) -> None:
        """Raise if ``limit`` bad steps came in a row (one read of the device counters)."""
        self._since_check = 0
        worst = 0 if self._worst is None else int(self._worst)
        if worst >= self.limit:
            raise TrainingDiverged(
                f"{worst} training steps in a row had a non-finite loss or gradient "
                f"(train.max_nonfinite_steps = {self.limit}); the last good checkpoint is kept: lower train.lr, "
                "set train.grad_clip, then continue with --resume"
            )

    @property
    def skipped(self) -> int:
        return 0 if self._skipped is None else int(self._skipped)

    @property
    def in_a_row(self) -> int:
        return 0 if self._in_a_row is None else int(self._in_a_row)


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def guarded_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, guard: NonFiniteGuard, grad_clip: Optional[float] = None,
    precision: Optional[Precision] = None,
) -> torch.Tensor:
    """After ``backward()``: clip (if asked), then take the optimizer step unless the gradient norm is
    NaN/inf. Returns found_inf (a () float tensor, 1.0 for a skipped step) without reading it.
    ``precision`` None: fp32."""
    precision = precision or Precision("fp32")
    precision.unscale(optimizer)
    if grad_clip is not None:
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = _grad_norm(model)
    found_inf = guard.observe(norm)
    if precision.step(optimizer):
        pass  # fp16: the scaler skipped an overflowed step itself (from the same gradients)
    elif optimizer.defaults.get("fused"):
        # the fused kernels leave weights, moments and step counts alone where found_inf is 1
        optimizer.found_inf = found_inf
        optimizer.grad_scale = None
        optimizer.step()
    elif not bool(found_inf):
        optimizer.step()
    return found_inf


def batch_loss(model: nn.Module, data: TaskData, objective, batch, *, rl_coef: float, device: torch.device,
               precision: Precision, all_slots: bool = False):
    """The forward pass of one training batch (images, labels, ids) and its loss terms -> (terms, labels
    on the device). The slot count comes from the host labels (nothing is read from the device), or
    is every slot with ``all_slots`` (a compiled step: one episode length)."""
    images, labels, ids = batch
    slots = objective.all_slots() if all_slots else objective.slots(labels)
    x = data.model_input(images.to(device, non_blocking=True), train=True, ids=ids)
    y = labels.to(device, non_blocking=True)
    with precision.autocast():
        return objective.loss(model(x, **slots), y, rl_coef), y


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
    precision: Optional[Precision] = None,
    all_slots: bool = False,
    average: Optional[WeightAverage] = None,
    token_loss: str = "leading",
) -> dict[str, float]:
    """Train for one pass over ``loader``; return mean loss terms, accuracy and images/s over all ranks.
    ``precision``: the step's arithmetic (:mod:`attn.engine.precision`; None: fp32); ``all_slots``: see
    :func:`batch_loss`; ``average``: a :class:`~attn.engine.averaging.WeightAverage` updated after every
    step; ``token_loss``: see :class:`~attn.engine.objective.Sequences`.

    accuracy: share of images whose whole label was read right (the sequence accuracy for sequence
    tasks); token_accuracy: share of label tokens read right; reward: mean R; glimpses_per_image: the
    glimpses that counted (DRAM stops counting at a sequence's first mistake); nonfinite_steps: steps
    skipped because their loss or gradient was NaN/inf (they count in no other metric).
    """
    guard = nonfinite or NonFiniteGuard(limit=2**62)
    skipped_before = guard.skipped
    model.train()
    objective = objective_for(data.spec, token_loss)
    sums = torch.zeros(len(_TRAIN_SUMS) + 1, dtype=torch.float64, device=device)  # + image count
    start = time.perf_counter()
    n_batches = len(loader)
    precision = precision or Precision("fp32", device)
    for i, batch in enumerate(loader):
        terms, y = batch_loss(model, data, objective, batch, rl_coef=rl_coef, device=device, precision=precision,
                              all_slots=all_slots)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(terms.total)
        found_inf = guarded_step(model, optimizer, guard, grad_clip, precision)
        if average is not None:
            average.update()
        with torch.no_grad():
            b = terms.correct.new_full((), y.shape[0], dtype=sums.dtype)
            batch_sums = torch.stack(
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
                    b,
                ]
            ).to(sums.dtype)
            # a skipped step counts in no metric (where, not a product: its terms may be NaN)
            sums += torch.where(found_inf > 0, torch.zeros_like(batch_sums), batch_sums)
        if progress is not None:
            progress(i + 1, n_batches)
    guard.check()
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
    tokens right). nll is per label token. The split's ``missing`` images count as wrong (in accuracy,
    error and count only).
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
        episode = model(x, policy=policy, generator=generator, copies=m, **objective.slots(labels))
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
    total["count"] += loader.split.missing  # images no prediction could get right: errors (Split.missing)
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
