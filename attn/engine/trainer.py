"""The training run on one worker: epochs, validation, early stopping, checkpoints, final test.

:func:`fit` is the same for every task and model and knows nothing of Ray or MLflow: it talks to the
outside through two small interfaces, a :class:`Reporter` (checkpoints in and out, per-epoch reports:
Ray Train's ``report``/``get_checkpoint`` in a worker) and a :class:`Tracker` (metrics and artifacts:
MLflow on rank 0, nothing elsewhere). Tests and benchmarks can run it with local stand-ins. It reads
as its phases: set up, resume or transfer, describe, one epoch after another, final test, publish.
"""

from __future__ import annotations

import copy
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch
from torch import nn

from attn.config import ExperimentConfig, dump_config
from attn.data import BatchLoader, TaskData, build_data
from attn.engine.averaging import WeightAverage
from attn.engine.checkpoint import BEST_FILE
from attn.engine.compile import compile_training
from attn.engine.cost import model_cost
from attn.engine.objective import objective_for
from attn.engine.optim import build_optimizer, build_scheduler, fit_schedule_to, step_scheduler
from attn.engine.passes import NonFiniteGuard, batch_loss, evaluate, score_split, train_epoch
from attn.engine.precision import Precision
from attn.engine.pictures import Pictures
from attn.engine.split_stats import SplitStats
from attn.engine.train_state import TrainState
from attn.engine.transfer import TransferReport, transfer_weights
from attn.models import build_model
from attn.models.build import evaluation_std
from attn.models.policy import policy_std_at


class Reporter(Protocol):
    def latest_checkpoint(self) -> Optional[str]:
        """Directory of the checkpoint to resume from (a local copy), or None."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Optional[str]) -> None:
        """Called by every rank once per epoch; ``checkpoint_dir`` is given on rank 0 only."""


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None: ...

    def set_tag(self, key: str, value: str) -> None: ...

    def log_model(self, model: nn.Module, config_yaml: str, metrics: Optional[dict[str, float]] = None,
                  step: int = 0) -> None:
        """The best model in a portable format (MLflow's PyTorch flavour on rank 0), and ``metrics``
        (the test results) at ``step``, linked to it."""

    def sync(self, history: list[dict[str, float]]) -> None:
        """When a worker group starts: the epochs so far (from the checkpoint), so that the tracker
        ends up with each epoch exactly once however often the workers were restarted."""

    def close(self) -> None:
        """Deliver anything still buffered."""


class NullTracker:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        pass

    def set_tag(self, key: str, value: str) -> None:
        pass

    def log_model(self, model: nn.Module, config_yaml: str, metrics: Optional[dict[str, float]] = None,
                  step: int = 0) -> None:
        pass

    def sync(self, history: list[dict[str, float]]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class WorkerInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")


# Per-pass values that are not curves: the image count, and timing logged once under its own name.
_NOT_LOGGED = ("count", "workers", "images_per_s", "epoch_time_s")


def _epoch_seed(base: int, epoch: int, rank: int) -> int:
    # Reseeding at every epoch makes a resumed run draw the same episodes as an uninterrupted one.
    return (base * 1_000_003 + epoch * 1_009 + rank) % (2**63)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _log_transfer(tracker: Tracker, report: TransferReport, source: str) -> None:
    tracker.set_tag("transfer.source", source)
    tracker.set_tag("transfer.summary", report.summary())
    with tempfile.TemporaryDirectory(prefix="attn-transfer-") as tmp:
        path = Path(tmp) / "report.md"
        path.write_text(report.markdown(source))
        tracker.log_artifact(str(path), "transfer")


@dataclass
class _Run:
    """One worker's training run: what every phase of :func:`fit` reads."""

    cfg: ExperimentConfig
    info: WorkerInfo
    reporter: Reporter
    tracker: Tracker
    log: Callable[[str], None]
    data: TaskData
    state: TrainState
    train_model: nn.Module
    config_yaml: str
    loaders: dict[str, BatchLoader]
    pictures: Optional[Pictures]
    nonfinite: NonFiniteGuard
    epoch_times: list[float] = field(default_factory=list)
    last_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def chief(self) -> bool:
        return self.info.rank == 0

    def report(self, metrics: dict[str, float]) -> None:
        """Every rank reports; rank 0 with the checkpoint of the state as it is now."""
        with tempfile.TemporaryDirectory(prefix="attn-ckpt-") as tmp:
            ckpt_dir = str(self.state.save(tmp, self.config_yaml)) if self.chief else None
            self.reporter.report(metrics, ckpt_dir)


def _setup(cfg, info, reporter, tracker, log) -> _Run:
    tc = cfg.train
    data = build_data(cfg.data)
    _images_to_device(data, info.device, tc.data_on_device, log if info.rank == 0 else (lambda line: None))
    torch.manual_seed(tc.seed)  # the same initial weights on every rank and for any worker count
    model = build_model(cfg.model, data.spec, (data.mean, data.std)).to(info.device)
    optimizer = build_optimizer(model, tc)
    average = WeightAverage(model, tc.ema_decay) if tc.ema_decay is not None else None
    state = TrainState(model, optimizer, build_scheduler(optimizer, tc), Precision(tc.precision, info.device),
                       average=average)
    r, w, eval_bs = info.rank, info.world, cfg.eval.batch_size
    loaders = {
        "train": BatchLoader(data.train, tc.batch_size, shuffle=True, seed=tc.seed, rank=r, world=w,
                             fill_last=tc.compile != "off"),
        "val": BatchLoader(data.val, eval_bs, shuffle=False, rank=r, world=w),
        "test": BatchLoader(data.test, eval_bs, shuffle=False, rank=r, world=w),
    }
    return _Run(cfg, info, reporter, tracker, log, data, state, model, dump_config(cfg), loaders,
                None, NonFiniteGuard(tc.max_nonfinite_steps))


def _images_to_device(data: TaskData, device: torch.device, mode: str, log: Callable[[str], None]) -> None:
    """Move the splits' stored images to the training GPU once (``train.data_on_device``)."""
    if device.type != "cuda" or mode == "off":
        return
    size = sum(s.images.numel() * s.images.element_size() for s in (data.train, data.val, data.test))
    free, _ = torch.cuda.mem_get_info(device)
    if mode == "auto" and size > free / 2:
        log(f"data: the stored images take {size / 2**30:.1f} GiB, over half of the GPU's free "
            f"{free / 2**30:.1f} GiB: they stay on the host (train.data_on_device=on to force)")
        return
    data.train, data.val, data.test = (s.images_on(device) for s in (data.train, data.val, data.test))


def _resume_or_transfer(run: _Run, init: Optional[tuple[dict[str, torch.Tensor], str]]) -> None:
    """Continue from the latest checkpoint if there is one, else load ``init`` where it fits."""
    state, tc = run.state, run.cfg.train
    resume_dir = run.reporter.latest_checkpoint()
    if resume_dir is not None:
        state.restore(resume_dir, run.config_yaml)
        fit_schedule_to(state.scheduler, tc.epochs)
        if run.chief:
            # a Reporter whose worker group was restarted after a failure says so (Ray Train's)
            restarted = getattr(run.reporter, "restarted", False)
            cause = "worker group restarted after a lost node or process: " if restarted else ""
            run.log(f"{cause}resuming from {resume_dir}: epoch {state.next_epoch}, best val error {state.best_error:.2f}%")
    if run.chief:
        # Also without a checkpoint: a worker group restarted before its first one re-runs epochs
        # the run may already hold.
        run.tracker.sync(state.history)
    if init is not None and resume_dir is None:
        report = transfer_weights(state.model, init[0], context=tc.init_context, classifier=tc.init_classifier)
        if state.average is not None:
            state.average.reset()
        state.best_weights = copy.deepcopy(state.eval_model.state_dict())
        if run.chief:
            run.log(f"weights from {init[1]}: " + "\n  ".join(report.lines()))
            _log_transfer(run.tracker, report, init[1])


def _describe(run: _Run) -> None:
    """A new run's first lines: the model's cost (also as metrics), the data, the data's notes."""
    cfg, data, tc = run.cfg, run.data, run.cfg.train
    cost = model_cost(run.state.model, data.spec)
    run.tracker.log_metrics(cost, step=0)
    run.log(
        f"{cfg.model.name}/{cfg.model.core.kind} on {cfg.data.task}: {cost['model_params']:,} parameters "
        f"({cost['model_params_trainable']:,} trainable), {cost['model_flops_per_image'] / 1e6:,.1f} MFLOPs "
        f"per image and episode; {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images; "
        f"{run.info.world} worker(s) x batch {tc.batch_size}"
    )
    for note in data.notes:
        run.log(note)
    if (note := run.state.precision.note()) is not None:
        run.log(note)


def _run_epoch(run: _Run, epoch: int) -> bool:
    """Train and validate one epoch, log it, checkpoint it; True when early stopping ends the run."""
    cfg, tc, state, dev = run.cfg, run.cfg.train, run.state, run.info.device
    t0 = time.perf_counter()
    torch.manual_seed(_epoch_seed(tc.seed, epoch, run.info.rank))
    _set_policy_std(run, policy_std_at(cfg.model.policy_std, cfg.model.policy_std_final, epoch, tc.epochs))
    run.loaders["train"].set_epoch(epoch)
    progress = _EpochProgress(run.log, f"epoch {epoch + 1}/{tc.epochs}", tc.batch_size * run.info.world) \
        if run.chief else None
    tm = train_epoch(run.train_model, run.loaders["train"], run.data, state.optimizer, rl_coef=tc.rl_coef,
                     device=dev, grad_clip=tc.grad_clip, nonfinite=run.nonfinite, progress=progress,
                     precision=state.precision, all_slots=tc.compile != "off", average=state.average,
                     token_loss=tc.token_loss)
    vm = evaluate(state.eval_model, run.loaders["val"], run.data, device=dev, policy="mean", seed=cfg.eval.seed)
    lr = state.optimizer.param_groups[0]["lr"]
    step_scheduler(state.scheduler, vm["error"])
    stop = state.end_epoch(epoch, vm["error"], tc.patience)
    run.epoch_times.append(time.perf_counter() - t0)
    metrics = {"epoch": epoch}
    metrics.update({f"train_{k}": v for k, v in tm.items() if k not in _NOT_LOGGED})
    metrics.update({f"val_{k}": v for k, v in vm.items() if k not in _NOT_LOGGED})
    metrics.update(best_val_error=state.best_error, lr=lr, images_per_s=tm["images_per_s"],
                   epoch_time_s=run.epoch_times[-1])
    run.last_metrics = metrics
    state.history.append({k: float(v) for k, v in metrics.items()})
    if run.chief:
        run.tracker.log_metrics(metrics, step=epoch)
        if run.pictures.due(epoch):
            run.pictures.episodes(state.eval_model, f"epoch_{epoch + 1:03d}", run.tracker)
        recent = run.epoch_times[-5:]
        left = (tc.epochs - epoch - 1) * (sum(recent) / len(recent))
        run.log(
            f"epoch {epoch + 1}/{tc.epochs} | train loss {tm['loss']:.4f} acc {100 * tm['accuracy']:.2f}% "
            f"| val err {vm['error']:.2f}% (best {state.best_error:.2f}% @ {state.best_epoch + 1}) "
            f"| {tm['images_per_s']:,.0f} img/s | {run.epoch_times[-1]:.1f}s/epoch | left <= {_format_eta(left)}"
        )
    run.report(metrics)
    if stop and run.chief:
        run.log(f"early stop: no better validation error for {tc.patience} epochs")
    return stop


class _EpochProgress:
    """Within a long epoch, a line every ``every_s`` seconds: batches done, images/s, time left in the
    epoch (host clock only: nothing is read from the device)."""

    def __init__(self, log: Callable[[str], None], label: str, images_per_batch: int, every_s: float = 30.0):
        self.log, self.label, self.images_per_batch, self.every_s = log, label, images_per_batch, every_s
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s or done >= total:
            return
        self.last, elapsed = now, now - self.start
        self.log(f"{self.label} | {done:,}/{total:,} batches | {done * self.images_per_batch / elapsed:,.0f} img/s "
                 f"| epoch left {_format_eta(elapsed / done * (total - done))}")


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` holds on any rank (every rank must wrap its model in DDP the same way)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)  # nccl reduces device tensors only
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def unused_parameters(model: nn.Module, loader: BatchLoader, data: TaskData, rl_coef: float,
                      device: torch.device) -> list[str]:
    """Names of the trainable parameters that one training step leaves without a gradient (e.g. the
    location network of a one-glimpse RAM, or DRAM's with ``model.policy_grad=detached``). The step is
    a probe: random state, buffers (batch-norm statistics) and gradients are put back afterwards."""
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        terms, _ = batch_loss(model, data, objective_for(data.spec), next(iter(loader)), rl_coef=rl_coef,
                              device=device, precision=Precision("fp32"))
        terms.total.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    model.load_state_dict(buffers)
    return unused


def _set_policy_std(run: _Run, sigma: float) -> None:
    """sigma of the location policy for this epoch, in the trained model and the averaged one."""
    run.state.model.std = sigma
    run.state.eval_model.std = sigma


def _final_test(run: _Run) -> tuple[dict[str, float], nn.Module, SplitStats]:
    """Test the best weights: the mean policy, one sampled episode, and M averaged sampled episodes.
    On a copy, so the last weights stay in place for the checkpoint (resuming with more epochs)."""
    state, ev, dev = run.state, run.cfg.eval, run.info.device
    best_model = copy.deepcopy(state.model)
    best_model.load_state_dict(state.best_weights)
    best_model.std = evaluation_std(run.cfg.model)  # also after an early stop, before sigma's last epoch
    stats = SplitStats(run.data.spec, dev)
    final = {
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_error": state.best_error,
        **score_split(best_model, run.loaders["test"], run.data, device=dev, prefix="test", mc_samples=ev.mc_samples,
                      seed=ev.seed, stats=stats, single_sample=True),
    }
    return final, best_model, stats


def _publish(run: _Run, final: dict[str, float], best_model: nn.Module, stats: SplitStats) -> None:
    """Rank 0: the test metrics, pictures, tables, result tags, best weights and model."""
    tracker, cfg = run.tracker, run.cfg
    # best_val_error is already a curve (every epoch); logging it again would repeat the last step.
    once = {"epoch", "best_val_error"} if run.state.history else {"epoch"}
    # the model first, so that the test metrics are linked to it (the Models view shows them)
    tracker.log_model(best_model, run.config_yaml, metrics={k: v for k, v in final.items() if k not in once},
                      step=int(final["epoch"]))
    run.pictures.episodes(best_model, "final", tracker)
    run.pictures.analysis(stats, tracker, step=final["epoch"])
    run.pictures.curves(run.state.history, f"{cfg.model.name}/{cfg.model.core.kind}", tracker)
    what = objective_for(run.data.spec).error_name
    best = int(final["best_epoch"]) + 1
    tracker.set_tag("result.test_error", f"{final['test_error']:.2f}")
    tracker.set_tag("result.test_error_mc", f"{final['test_error_mc']:.2f}")
    tracker.set_tag("result.best_epoch", str(best))
    tracker.set_tag(
        "result.summary",
        f"test {what} {final['test_error']:.2f}% (mean policy), {final['test_error_mc']:.2f}% "
        f"({int(final['test_mc_samples'])} samples), best epoch {best}",
    )
    run.log(
        f"test {what} (best epoch {best}): mean policy {final['test_error']:.2f}% | "
        f"1 sample {final['test_error_sample']:.2f}% | {cfg.eval.mc_samples} samples averaged {final['test_error_mc']:.2f}%"
    )
    with tempfile.TemporaryDirectory(prefix="attn-best-") as tmp:
        path = Path(tmp) / BEST_FILE
        torch.save(run.state.best_weights, path)
        (Path(tmp) / "config.yaml").write_text(run.config_yaml)
        tracker.log_artifact(str(path), "checkpoint")
        tracker.log_artifact(str(Path(tmp) / "config.yaml"), "checkpoint")
    tracker.close()


def fit(
    cfg: ExperimentConfig,
    info: WorkerInfo,
    reporter: Reporter,
    tracker: Tracker,
    wrap_model: Callable[..., nn.Module] = lambda m, find_unused_parameters=False: m,
    log: Callable[[str], None] = print,
    init: Optional[tuple[dict[str, torch.Tensor], str]] = None,
) -> dict[str, float]:
    """Train ``cfg`` to the end (or early stop), test the best weights, return the final metrics.

    wrap_model(model, find_unused_parameters): DDP for several workers; told when this configuration
    leaves parameters without a gradient (:func:`unused_parameters`), which DDP must know.
    init: (state dict, its name) of the weights ``train.init_from`` named, loaded where they fit before
    the first epoch (ignored when resuming: the run's own checkpoint wins)."""
    run = _setup(cfg, info, reporter, tracker, log)
    _resume_or_transfer(run, init)
    unused = unused_parameters(run.state.model, run.loaders["train"], run.data, cfg.train.rl_coef,
                               info.device) if info.world > 1 else []
    if unused and run.chief:
        log(f"{len(unused)} parameter(s) get no gradient in this configuration ({', '.join(unused[:3])}"
            f"{', ...' if len(unused) > 3 else ''}): DDP looks for them at every step")
    wrapped = wrap_model(run.state.model, find_unused_parameters=_any_rank(bool(unused), info.device))
    run.train_model = compile_training(wrapped, cfg.train.compile, info.device, log if run.chief else (lambda _: None))
    if run.chief and run.state.next_epoch == 0:
        _describe(run)
    run.pictures = Pictures(cfg, run.data, info.device) if run.chief else None
    if not run.state.early_stopped:
        for epoch in range(run.state.next_epoch, cfg.train.epochs):
            if _run_epoch(run, epoch):
                break
    final, best_model, stats = _final_test(run)
    if run.chief:
        _publish(run, final, best_model, stats)
    sys.stdout.flush()
    # The final report comes last (a sweep may stop the trial as soon as it arrives) and repeats the
    # last epoch's curves, so that every per-epoch metric is also in the final result.
    run.report({**run.last_metrics, **final})
    return final
