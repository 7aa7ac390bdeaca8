"""Per-worker training function run by ``ray.train.torch.TorchTrainer`` on every rank.

It adapts Ray Train to the engine's two interfaces: checkpoints and reports go through
``ray.train.get_checkpoint`` / ``ray.train.report``; metrics go to MLflow from rank 0 only.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import pyarrow.fs
import ray.train
import ray.train.torch
import torch

from attn.config import ExperimentConfig
from attn.engine.trainer import NullTracker, WorkerInfo, fit
from attn.runtime import configure_torch


ATTEMPT_FILE = "attempt"
"""In each checkpoint: the token of the ``fit()`` call (one driver's TorchTrainer) that wrote it."""


class RayReporter:
    """Checkpoint in/out through Ray Train. A restored checkpoint on local (or shared) disk is read
    where it is, so the log names the run's own checkpoint folder; one in remote storage (S3, GCS)
    is copied to a local folder first.

    ``attempt``: a token the driver made for this TorchTrainer. Each checkpoint carries it, so a worker
    group that finds a checkpoint with its own token was restarted by Ray Train after a failure (a
    lost node or process), not resumed by the user: ``restarted`` says which."""

    def __init__(self, attempt: str = "") -> None:
        self._restore_dir: Optional[str] = None
        self.attempt = attempt
        self.restarted = False

    def latest_checkpoint(self) -> Optional[str]:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem):
            folder = ckpt.path
        else:
            self._restore_dir = folder = tempfile.mkdtemp(prefix="attn-restore-")
            ckpt.to_directory(self._restore_dir)
        token = Path(folder) / ATTEMPT_FILE
        self.restarted = bool(self.attempt) and token.is_file() and token.read_text() == self.attempt
        return folder

    def report(self, metrics: dict[str, float], checkpoint_dir: Optional[str]) -> None:
        if checkpoint_dir:
            (Path(checkpoint_dir) / ATTEMPT_FILE).write_text(self.attempt)
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def cleanup(self) -> None:
        if self._restore_dir:
            shutil.rmtree(self._restore_dir, ignore_errors=True)


def _quiet_ray_train_reports() -> None:
    # Ray Train logs one "Reporting training result" INFO line per rank and epoch (with every
    # metric), which drowns the progress lines; its logger is named after its source file.
    try:
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:  # a Ray version without Train V2's module layout: keep its logging
        pass


class _Lines:
    """Rank 0's console lines, each starting with ``prefix`` (a sweep trial's id, so that the lines of
    trials running side by side can be told apart)."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix

    def __call__(self, line: str) -> None:
        # Write to the stream, not through print(): Ray Train patches print to also copy every line
        # into its logger, which shows each progress line twice on the driver.
        sys.stdout.write("".join(self.prefix + part + "\n" for part in line.split("\n")))
        sys.stdout.flush()


def _quiet(line: str) -> None:
    pass


def _worker_nodes(world: int) -> list[str]:
    """``ip/node-id`` of every rank, gathered over the process group (rank order): where the run
    actually trained, e.g. to see that a SPREAD placement put its workers on different nodes."""
    here = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:12]}"
    if world == 1:
        return [here]
    nodes: list[Any] = [None] * world
    torch.distributed.all_gather_object(nodes, here)
    return [str(n) for n in nodes]


def _system_metrics(cfg: ExperimentConfig, ctx: Any, ml: Optional[dict], device: torch.device, log: Any) -> Any:
    """The node's system-metrics sampler (on its worker of local rank 0), or None
    (:mod:`attn.tracking.system_metrics`)."""
    from attn.tracking.system_metrics import SystemMetrics, wanted

    if not ml or ctx.get_local_rank() != 0 or not wanted(cfg.tracking.system_metrics, device.type == "cuda"):
        return None
    several = ctx.get_world_size() > ctx.get_local_world_size()
    node = f"node{ctx.get_node_rank()}" if several else None
    return SystemMetrics(ml["uri"], ml["run_id"], cfg.tracking.system_metrics_interval_s, node, log)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker: ``loop_config`` = {"config": ..., "mlflow": {...}}."""
    cfg = ExperimentConfig.model_validate(loop_config["config"])
    _quiet_ray_train_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    threads = cfg.ray.threads_per_worker or max(1, int(-(-cfg.ray.cpus_per_worker // 1)))
    configure_torch(threads)
    device = ray.train.torch.get_device()

    _log = _Lines(loop_config.get("prefix", ""))
    tracker: Any = NullTracker()
    ml = loop_config.get("mlflow")
    if ml:
        from attn.tracking import fail_fast_in_this_process

        fail_fast_in_this_process()  # this process is attn's: its MLflow clients never block training
    if rank == 0 and ml:
        from attn.tracking import MlflowTracker

        tracker = MlflowTracker(ml["uri"], ml["run_id"], retry_timeout_s=cfg.tracking.retry_timeout_s, log=_log)
    sampler = _system_metrics(cfg, ctx, ml, device, _log)
    nodes = _worker_nodes(world)
    if rank == 0:
        _log(f"workers (rank: ip/node): {', '.join(f'{i}: {n}' for i, n in enumerate(nodes))}")
        if ml:
            tracker.set_tag("ray.worker_nodes", ",".join(nodes))

    def wrap(model: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        # prepare_model wraps in DDP when world > 1 (the model is on the worker's device already).
        if world == 1:
            return model
        return ray.train.torch.prepare_model(
            model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": find_unused_parameters}
        )

    init = None
    if cfg.train.init_from:
        # every rank reads the weights (an MLflow run any node can reach, or a path on a shared folder)
        from attn.sources import load_source

        weights = load_source(cfg.train.init_from, ml["uri"] if ml else "")
        init = (weights.state, weights.label)

    reporter = RayReporter(loop_config.get("attempt", ""))
    try:
        fit(
            cfg, WorkerInfo(rank, world, device), reporter, tracker, wrap_model=wrap, log=_log if rank == 0 else _quiet,
            init=init,
        )
    finally:
        if sampler is not None:
            sampler.stop()
        reporter.cleanup()
        sys.stdout.flush()
