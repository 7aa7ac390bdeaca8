"""The training run on one worker: epochs, validation, early stopping, checkpoints, final test.

:func:`fit` is the same for every task and model and knows nothing of Ray or MLflow: it talks to the
outside through two small interfaces, a :class:`Reporter` (checkpoints in and out, per-epoch reports:
Ray Train's ``report``/``get_checkpoint`` in a worker) and a :class:`Tracker` (metrics and artifacts:
MLflow on rank 0, nothing elsewhere). Tests and benchmarks can run it with local stand-ins.
"""

from __future__ import annotations

import copy
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from attn.config import ExperimentConfig, dump_config
from attn.data import BatchLoader, build_data
from attn.engine.checkpoint import BEST_FILE, load_checkpoint, save_checkpoint
from attn.engine.cost import model_cost
from attn.engine.details import EvalDetails
from attn.engine.loop import NonFiniteGuard, evaluate, score_split, train_epoch
from attn.engine.optim import build_optimizer, build_scheduler, step_scheduler
from attn.engine.pictures import Pictures
from attn.engine.transfer import TransferReport, transfer_weights
from attn.errors import CheckpointError
from attn.models import build_model


class Reporter(Protocol):
    def latest_checkpoint(self) -> Optional[str]:
        """Directory of the checkpoint to resume from (a local copy), or None."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Optional[str]) -> None:
        """Called by every rank once per epoch; ``checkpoint_dir`` is given on rank 0 only."""


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None: ...

    def set_tag(self, key: str, value: str) -> None: ...

    def log_model(self, model: nn.Module, config_yaml: str) -> None:
        """The best model in a portable format (MLflow's PyTorch flavour on rank 0)."""

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

    def log_model(self, model: nn.Module, config_yaml: str) -> None:
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


def _tag_results(tracker: Tracker, final: dict[str, float], sequence: bool) -> None:
    """Key results as tags (the runs list can show them as columns) and in the run's description."""
    what = "sequence error" if sequence else "error"
    tracker.set_tag("result.test_error", f"{final['test_error']:.2f}")
    tracker.set_tag("result.test_error_mc", f"{final['test_error_mc']:.2f}")
    tracker.set_tag("result.best_epoch", str(int(final["best_epoch"]) + 1))
    tracker.set_tag(
        "result.summary",
        f"test {what} {final['test_error']:.2f}% (mean policy), {final['test_error_mc']:.2f}% "
        f"({int(final['test_mc_samples'])} samples), best epoch {int(final['best_epoch']) + 1}",
    )


def fit(
    cfg: ExperimentConfig,
    info: WorkerInfo,
    reporter: Reporter,
    tracker: Tracker,
    wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m,
    log: Callable[[str], None] = print,
    init: Optional[tuple[dict[str, torch.Tensor], str]] = None,
) -> dict[str, float]:
    """Train ``cfg`` to the end (or early stop), test the best weights, return the final metrics.

    init: (state dict, its name) of the weights ``train.init_from`` named, loaded where they fit before
    the first epoch (ignored when resuming: the run's own checkpoint wins)."""
    tc = cfg.train
    is_chief = info.rank == 0
    data = build_data(cfg.data)
    torch.manual_seed(tc.seed)  # the same initial weights on every rank and for any worker count
    model = build_model(cfg.model, data.spec, (data.mean, data.std)).to(info.device)
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc)
    config_yaml = dump_config(cfg)

    start_epoch, best_error, best_epoch, early_stopped = 0, math.inf, -1, False
    best_state: dict[str, Any] = copy.deepcopy(model.state_dict())
    # Every epoch's logged metrics, kept in the checkpoint: after a restart the tracker gets each
    # epoch exactly once (those it lost are sent again, those it has are not).
    history: list[dict[str, float]] = []
    resume_dir = reporter.latest_checkpoint()
    if resume_dir is not None:
        state, best_state = load_checkpoint(resume_dir, expected_config=config_yaml)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler") is not None:
                scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"{resume_dir}: checkpoint does not fit this config ({str(exc).splitlines()[0][:200]})"
            ) from None
        start_epoch, best_error, best_epoch = state["epoch"] + 1, state["best_error"], state["best_epoch"]
        history = list(state.get("history", []))
        # A finished run resumed with more epochs (train.epochs=N on --resume) trains on, unless it
        # had stopped early.
        early_stopped = bool(state.get("early_stopped"))
        if is_chief:
            log(f"resuming from {resume_dir}: epoch {start_epoch}, best val error {best_error:.2f}%")
    if is_chief:
        # Also without a checkpoint: a worker group restarted before its first one re-runs epochs
        # the run may already hold.
        tracker.sync(history)
    if init is not None and resume_dir is None:
        report = transfer_weights(model, init[0], context=tc.init_context, classifier=tc.init_classifier)
        best_state = copy.deepcopy(model.state_dict())
        if is_chief:
            log(f"weights from {init[1]}: " + "\n  ".join(report.lines()))
            _log_transfer(tracker, report, init[1])

    train_model = wrap_model(model)
    train_loader = BatchLoader(
        data.train, tc.batch_size, shuffle=True, seed=tc.seed, rank=info.rank, world=info.world
    )
    eval_bs = cfg.eval.batch_size
    val_loader = BatchLoader(data.val, eval_bs, shuffle=False, rank=info.rank, world=info.world)
    test_loader = BatchLoader(data.test, eval_bs, shuffle=False, rank=info.rank, world=info.world)
    if is_chief and start_epoch == 0:
        cost = model_cost(model, data.spec)
        tracker.log_metrics(cost, step=0)
        log(
            f"{cfg.model.name}/{cfg.model.core.kind} on {cfg.data.task}: {cost['model_params']:,} parameters "
            f"({cost['model_params_trainable']:,} trainable), {cost['model_flops_per_image'] / 1e6:,.1f} MFLOPs "
            f"per image and episode; {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images; "
            f"{info.world} worker(s) x batch {tc.batch_size}"
        )
        for note in data.notes:
            log(note)

    def save(epoch: int, metrics: dict[str, float]) -> None:
        ckpt_dir = None
        with tempfile.TemporaryDirectory(prefix="attn-ckpt-") as tmp:
            if is_chief:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": epoch,
                    "best_error": best_error,
                    "best_epoch": best_epoch,
                    "early_stopped": early_stopped,
                    "history": history,
                }
                ckpt_dir = str(save_checkpoint(tmp, state, best_state, config_yaml))
            reporter.report(metrics, ckpt_dir)

    pictures = Pictures(cfg, data, info.device) if is_chief else None
    epoch = start_epoch - 1
    nonfinite = NonFiniteGuard(tc.max_nonfinite_steps)
    last_metrics: dict[str, float] = {}
    epoch_times: list[float] = []
    if not early_stopped:
        for epoch in range(start_epoch, tc.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(_epoch_seed(tc.seed, epoch, info.rank))
            train_loader.set_epoch(epoch)
            tm = train_epoch(
                train_model, train_loader, data, optimizer, rl_coef=tc.rl_coef, device=info.device,
                grad_clip=tc.grad_clip, nonfinite=nonfinite,
            )
            vm = evaluate(model, val_loader, data, device=info.device, policy="mean", seed=cfg.eval.seed)
            lr = optimizer.param_groups[0]["lr"]
            step_scheduler(scheduler, vm["error"])
            if vm["error"] <= best_error:
                best_error, best_epoch = vm["error"], epoch
                best_state = copy.deepcopy(model.state_dict())
            epoch_times.append(time.perf_counter() - t0)
            metrics = {"epoch": epoch}
            metrics.update({f"train_{k}": v for k, v in tm.items() if k not in _NOT_LOGGED})
            metrics.update({f"val_{k}": v for k, v in vm.items() if k not in _NOT_LOGGED})
            metrics.update(
                best_val_error=best_error,
                lr=lr,
                images_per_s=tm["images_per_s"],
                epoch_time_s=epoch_times[-1],
            )
            last_metrics = metrics
            history.append({k: float(v) for k, v in metrics.items()})
            stop = epoch - best_epoch > tc.patience
            if is_chief:
                tracker.log_metrics(metrics, step=epoch)
                if pictures.due(epoch):
                    pictures.episodes(model, f"epoch_{epoch + 1:03d}", tracker)
                left = (tc.epochs - epoch - 1) * (sum(epoch_times[-5:]) / len(epoch_times[-5:]))
                log(
                    f"epoch {epoch + 1}/{tc.epochs} | train loss {tm['loss']:.4f} acc {100 * tm['accuracy']:.2f}% "
                    f"| val err {vm['error']:.2f}% (best {best_error:.2f}% @ {best_epoch + 1}) "
                    f"| {tm['images_per_s']:,.0f} img/s | {epoch_times[-1]:.1f}s/epoch | left <= {_format_eta(left)}"
                )
            early_stopped = stop
            save(epoch, metrics)
            if stop:
                if is_chief:
                    log(f"early stop: no better validation error for {tc.patience} epochs")
                break

    # Test the best weights: the mean policy, one sampled episode, and M averaged sampled episodes.
    # A copy, so the last weights stay in place for the checkpoint (resuming with more epochs).
    best_model = copy.deepcopy(model)
    best_model.load_state_dict(best_state)
    seed, m, dev = cfg.eval.seed, cfg.eval.mc_samples, info.device
    details = EvalDetails(data.spec, dev)
    final = {
        "epoch": max(epoch, start_epoch - 1),
        "best_epoch": best_epoch,
        "best_val_error": best_error,
        **score_split(best_model, test_loader, data, device=dev, prefix="test", mc_samples=m, seed=seed,
                      details=details, single_sample=True),
    }
    if is_chief:
        # best_val_error is already a curve (every epoch); logging it again would repeat the last step.
        once = {"epoch", "best_val_error"} if history else {"epoch"}
        tracker.log_metrics({k: v for k, v in final.items() if k not in once}, step=final["epoch"])
        pictures.episodes(best_model, "final", tracker)
        pictures.analysis(details, tracker, step=final["epoch"])
        pictures.curves(history, f"{cfg.model.name}/{cfg.model.core.kind}", tracker)
        _tag_results(tracker, final, data.spec.is_sequence)
        what = "sequence error" if data.spec.is_sequence else "error"
        log(
            f"test {what} (best epoch {best_epoch + 1}): mean policy {final['test_error']:.2f}% | "
            f"1 sample {final['test_error_sample']:.2f}% | {m} samples averaged {final['test_error_mc']:.2f}%"
        )
    if is_chief:
        with tempfile.TemporaryDirectory(prefix="attn-best-") as tmp:
            path = Path(tmp) / BEST_FILE
            torch.save(best_state, path)
            (Path(tmp) / "config.yaml").write_text(config_yaml)
            tracker.log_artifact(str(path), "checkpoint")
            tracker.log_artifact(str(Path(tmp) / "config.yaml"), "checkpoint")
        tracker.log_model(best_model, config_yaml)
        tracker.close()
    sys.stdout.flush()
    # The final report comes last (a sweep may stop the trial as soon as it arrives) and repeats the
    # last epoch's curves, so that every per-epoch metric is also in the final result.
    save(final["epoch"], {**last_metrics, **final})
    return final
