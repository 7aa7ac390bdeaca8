"""Per-run driver: plan the run, start (or join) Ray, open the MLflow run, fit a ``TorchTrainer``.

``--resume`` relaunches the same Ray Train run name, so Ray restores its checkpoint manager and the
workers continue from the latest checkpoint into the same MLflow run. Planning, the Ray session and
closing the MLflow run are :mod:`attn.distributed.lifecycle`'s, shared with sweeps and evaluations.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from attn.config import ExperimentConfig
from attn.distributed.lifecycle import cluster_capacity, plan_run, ray_session, tracked
from attn.errors import AttnError, ConfigError, Interrupted
from attn.tracking import ensure_experiment, reopen_run, start_run, ui_link


@dataclass
class RunResult:
    run_name: str
    run_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, Any]


_USER_ERROR = re.compile(r"attn\.errors\.(\w+): (.+)")


def explain_failure(exc: BaseException, run_name: str) -> AttnError:
    """Turn a failed ``fit()`` into one line: a worker's own AttnError verbatim, else the last cause."""
    from attn import errors

    text = "\n".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e is not None)
    found = _USER_ERROR.findall(text)
    if found:
        name, message = found[-1]
        cls = getattr(errors, name, AttnError)
        return (cls if isinstance(cls, type) and issubclass(cls, AttnError) else AttnError)(message.strip())
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1].strip()[:300] if lines else type(exc).__name__
    return AttnError(f"run {run_name} failed: {last}; see the log above, fix the cause and continue with --resume")


def check_resources(cfg: ExperimentConfig, total: dict[str, float]) -> None:
    """One run's workers must fit in what the cluster can hold (``total``: :func:`cluster_capacity`)."""
    need_cpu = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    need_gpu = cfg.ray.num_workers * cfg.ray.gpus_per_worker
    if need_cpu > total.get("CPU", 0) + 1e-9 or need_gpu > total.get("GPU", 0) + 1e-9:
        raise ConfigError(
            f"ray: {cfg.ray.num_workers} worker(s) x ({cfg.ray.cpus_per_worker} CPU, {cfg.ray.gpus_per_worker} GPU) "
            f"need {need_cpu:g} CPUs and {need_gpu:g} GPUs, but the cluster holds at most {total.get('CPU', 0):g} CPUs and "
            f"{total.get('GPU', 0):g} GPUs; lower ray.num_workers or ray.cpus_per_worker/gpus_per_worker"
        )


def run_training(
    cfg: ExperimentConfig,
    *,
    config_file: Optional[str] = None,
    resume: bool = False,
    resume_name: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> RunResult:
    """Train one configuration through Ray Train; return where it lives and its final metrics."""
    plan = plan_run(cfg, "run", resume=resume, resume_name=resume_name, overrides=overrides)
    cfg, uri = plan.cfg, plan.uri
    with ray_session(cfg, uri), tracked(uri) as run:
        check_resources(cfg, cluster_capacity())
        if plan.resumed:
            run.run_id = plan.mlflow_run_id
            reopen_run(uri, run.run_id)
            print(f"resuming run {plan.name} (MLflow run {run.run_id})", flush=True)
        else:
            exp_id = ensure_experiment(uri, cfg.tracking.experiment_name or "default", cfg.tracking.artifact_location)
            plan.create_folder()
            run.run_id = start_run(uri, exp_id, cfg, plan.name, config_file=config_file)
            plan.write_record(run.run_id)
            print(f"run {plan.name}: MLflow run {run.run_id} in {uri}", flush=True)
        print(f"MLflow UI: {ui_link(uri, run.run_id)}", flush=True)
        try:
            result = _fit(cfg, plan.name, plan.dir, uri, run.run_id)
        except (KeyboardInterrupt, SystemExit):
            # Ray Train's own SIGINT handler aborts the run and may exit through SystemExit.
            result = None
        metrics = dict(result.metrics or {}) if result is not None else {}
        if "test_error" not in metrics:  # only the final report carries the test metrics
            run.status = "KILLED"
            raise Interrupted(
                f"run {plan.name} was interrupted; its last checkpoint is kept: continue it with --resume {plan.name}"
            )
        run.status = "FINISHED"
        return RunResult(plan.name, plan.dir, run.run_id, uri, metrics)


def make_trainer(cfg: ExperimentConfig, name: str, storage_path: Path, uri: str, run_id: str, callbacks=(),
                 line_prefix: str = ""):
    """The ``TorchTrainer`` of one run: ``cfg.ray.num_workers`` workers running the per-worker loop,
    logging to MLflow run ``run_id``; its Ray Train run ``name`` lives under ``storage_path``. Every
    line the workers print starts with ``line_prefix`` (a sweep's trials: their trial id)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from attn.distributed.worker import train_loop_per_worker

    r = cfg.ray
    resources = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker > 0:
        resources["GPU"] = r.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        # attempt: which fit() wrote a checkpoint, so a worker group can tell Ray Train's restart from --resume
        train_loop_config={"config": cfg.to_dict(), "mlflow": {"uri": uri, "run_id": run_id}, "prefix": line_prefix,
                           "attempt": uuid.uuid4().hex},
        scaling_config=ScalingConfig(
            num_workers=r.num_workers,
            use_gpu=r.gpus_per_worker > 0,
            resources_per_worker=resources,
            placement_strategy=r.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            callbacks=list(callbacks),
            failure_config=FailureConfig(max_failures=r.max_failures or 0),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def _fit(cfg: ExperimentConfig, run_name: str, run_dir: Path, uri: str, run_id: str):
    """Build the TorchTrainer for this run and fit it; a failure becomes one AttnError line."""
    trainer = make_trainer(cfg, run_name, run_dir.parent, uri, run_id)
    try:
        return trainer.fit()
    except Exception as exc:
        raise explain_failure(exc, run_name) from None
