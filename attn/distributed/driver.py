"""Per-run driver: start (or join) Ray, open the MLflow run, fit a ``TorchTrainer``, close the run.

Storage layout (``ray.storage_path``, else ``$ATTN_STORAGE_PATH``, else ``./runs``)::

    runs/<experiment>/<run_name>/          Ray Train's run folder (checkpoints, state)
    runs/<experiment>/<run_name>/attn_run.json   run name, MLflow run id, resolved config

``--resume`` relaunches the same Ray Train run name, so Ray restores its checkpoint manager and the
workers continue from the latest checkpoint into the same MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from attn.config import ExperimentConfig, apply_overrides, check_storage_folder, dump_config, validate_config
from attn.data import check_data
from attn.errors import AttnError, CheckpointError, ConfigError, Interrupted
from attn.tracking import (
    check_reachable,
    end_run,
    ensure_experiment,
    open_store,
    reopen_run,
    resolve_tracking_uri,
    start_run,
)

RUN_FILE = "attn_run.json"


@dataclass
class RunResult:
    run_name: str
    run_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, Any]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def default_run_name(cfg: ExperimentConfig) -> str:
    m = cfg.model
    stamp = time.strftime("%Y%m%d-%H%M%S")
    glimpses = m.num_glimpses if m.name == "ram" else m.glimpses_per_digit
    return _slug(f"{cfg.data.task}-{m.name}-{m.core.kind}-g{glimpses}-{stamp}")


def storage_root(cfg: ExperimentConfig) -> Path:
    """``ray.storage_path``, else ``$ATTN_STORAGE_PATH`` (set on a cluster's nodes), else ``./runs``;
    absolute, because jobs and workers run in other folders."""
    value = cfg.ray.storage_path
    if value is None and os.environ.get("ATTN_STORAGE_PATH"):
        value = os.environ["ATTN_STORAGE_PATH"]
        try:
            check_storage_folder(value)
        except ValueError as exc:
            raise ConfigError(f"ATTN_STORAGE_PATH: {exc}") from None
    return Path(value or "runs").expanduser().resolve()


def check_writable(folder: Path) -> None:
    """The storage folder must be creatable and writable (a read-only mount, a file in the way or a
    missing permission fails here, in one line, not at the first checkpoint). Creates nothing."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        reason = f"{probe} is not a folder"
    elif not os.access(probe, os.W_OK | os.X_OK):
        reason = f"{probe} is not writable"
    else:
        return
    raise ConfigError(f"ray.storage_path: cannot write to {folder} ({reason}); give a writable folder")


def resolve_locations(cfg: ExperimentConfig) -> str:
    """Fix where the run lives before it is recorded: the storage folder and the tracking URI become
    absolute values in ``cfg`` (so the saved config says where they were); returns the URI."""
    cfg.ray.storage_path = str(storage_root(cfg))
    cfg.tracking.tracking_uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    return cfg.tracking.tracking_uri


def experiment_dir(cfg: ExperimentConfig) -> Path:
    return storage_root(cfg) / _slug(cfg.tracking.experiment_name or "default")


def find_run(cfg: ExperimentConfig, name: Optional[str]) -> Path:
    """The run folder to resume: ``name`` if given, else the newest run of the experiment."""
    root = experiment_dir(cfg)
    if name:
        d = root / name
        if not (d / RUN_FILE).is_file():
            raise ConfigError(f"--resume {name}: no run of that name in {root}")
        return d
    runs = sorted((p for p in root.glob(f"*/{RUN_FILE}")), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError(f"--resume: no earlier run of experiment '{cfg.tracking.experiment_name}' in {root}")
    return runs[-1].parent


_USER_ERROR = re.compile(r"attn\.errors\.(\w+): (.+)")


def _explain_failure(exc: BaseException, run_name: str) -> AttnError:
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


def _ray_init(cfg: ExperimentConfig, uri: str) -> bool:
    """Connect to ``ray.address`` (or RAY_ADDRESS), else start Ray here. True if we started it.

    Meanwhile the tracking store at ``uri`` opens in a thread (:func:`~attn.tracking.open_store`):
    both take seconds (importing MLflow; a new SQLite store creates its tables). It creates no
    experiment and no run: those come after the caller's resource check."""
    opener = ThreadPoolExecutor(1, thread_name_prefix="attn-store")
    store = opener.submit(open_store, uri)
    opener.shutdown(wait=False)
    try:
        return _start_ray(cfg)
    finally:
        store.result()


def _start_ray(cfg: ExperimentConfig) -> bool:
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1"}}
    # Ray Train's helpers (the placement-group cleaner, the state actor) find their cluster through
    # the state API, which without RAY_ADDRESS picks whichever Ray runs on the machine or fails when
    # there are several: a stopped trial's placement group then stays reserved and starves the next.
    if address:
        if re.fullmatch(r"[\w.\-]+:\d+", address):
            runtime_env["env_vars"]["RAY_ADDRESS"] = address
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AttnError(
                f"ray.address={address}: cannot connect to the Ray cluster ({str(exc).splitlines()[0][:200]})"
            ) from None
    else:
        with _own_gcs_port() as port:
            runtime_env["env_vars"]["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
            ray.init(runtime_env=runtime_env, log_to_driver=True, configure_logging=True, logging_level="warning")
    return True


@contextmanager
def _own_gcs_port():
    """A free port for the Ray head this process starts (RAY_GCS_SERVER_PORT, read while Ray starts
    its GCS; a port the user set is kept), so that its address is known before it runs."""
    given = os.environ.get("RAY_GCS_SERVER_PORT")
    if given:
        yield int(given)
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        yield port
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def cluster_capacity() -> dict[str, float]:
    """The CPUs, GPUs, ... the cluster can hold: the maximum its autoscaler may reach (a `ray up`
    cluster starts GPU workers on demand), or what it has now when it has no autoscaler."""
    import ray

    now = ray.cluster_resources()
    try:
        # What Ray Train itself checks a worker group against (private, hence the guard).
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # noqa: BLE001 - an older/newer Ray without it: what the cluster has now
        most = {}
    return {key: max(float(now.get(key, 0)), float(most.get(key, 0))) for key in set(now) | set(most)}


def _check_resources(cfg: ExperimentConfig) -> None:
    total = cluster_capacity()
    need_cpu = cfg.ray.num_workers * cfg.ray.cpus_per_worker
    need_gpu = cfg.ray.num_workers * cfg.ray.gpus_per_worker
    if need_cpu > total.get("CPU", 0) + 1e-9 or need_gpu > total.get("GPU", 0) + 1e-9:
        raise ConfigError(
            f"ray: {cfg.ray.num_workers} worker(s) x ({cfg.ray.cpus_per_worker} CPU, {cfg.ray.gpus_per_worker} GPU) "
            f"need {need_cpu:g} CPUs and {need_gpu:g} GPUs, but the cluster holds at most {total.get('CPU', 0):g} CPUs and "
            f"{total.get('GPU', 0):g} GPUs; lower ray.num_workers or ray.cpus_per_worker/gpus_per_worker"
        )


def _absolute_data_paths(cfg: ExperimentConfig) -> None:
    """Relative data paths mean: from ``$ATTN_DATA_ROOT`` if set (a cluster sets it to its shared
    folder, since a submitted job runs in a throwaway copy of the project), else from where run.py was
    started. Ray workers run in other folders, so they receive the absolute paths (also what the run
    records)."""
    base = Path(os.environ.get("ATTN_DATA_ROOT") or os.getcwd()).expanduser()

    def absolute(value: str) -> str:
        return str((base / Path(value).expanduser()).resolve())

    for key in ("data_dir", "cache_dir"):
        value = getattr(cfg.data, key)
        if value is not None:
            setattr(cfg.data, key, absolute(value))
    ctx = cfg.model.context
    for key in ("weights", "vit_config"):
        value = getattr(ctx, key)
        if value is not None and value != "imagenet":
            setattr(ctx, key, absolute(value))


def resolve_init(cfg: ExperimentConfig, uri: str) -> None:
    """Check ``train.init_from`` before any work and pin it: ``experiment:NAME`` becomes the run id it
    means now, a relative path an absolute one (workers run elsewhere); the run records that value."""
    source = cfg.train.init_from
    if not source:
        return
    from attn.sources import load_source, newest_finished_run

    if source.startswith("experiment:"):
        run_id = newest_finished_run(source[len("experiment:"):], uri)
        print(f"train.init_from: {source} is run {run_id}", flush=True)
        source = run_id
    elif "://" not in source and ":/" not in source and Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())
    load_source(source, uri)  # readable now, or one line now
    cfg.train.init_from = source


def _check_data_here(cfg: ExperimentConfig) -> None:
    """Fail on a missing or corrupt dataset before any run is opened, in one line, not inside a Ray
    worker. On a cluster the workers read their own copies, so the check is left to them."""
    if cfg.ray.address is None and not os.environ.get("RAY_ADDRESS"):
        check_data(cfg.data)
        if cfg.model.name == "dram":
            from attn.models.context import check_context_files

            check_context_files(cfg.model.context)


def run_training(
    cfg: ExperimentConfig,
    *,
    config_file: Optional[str] = None,
    resume: bool = False,
    resume_name: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> RunResult:
    """Train one configuration through Ray Train; return where it lives and its final metrics."""
    uri = resolve_locations(cfg)
    saved: Optional[dict[str, Any]] = None
    if resume:
        run_dir = find_run(cfg, resume_name)
        saved = json.loads((run_dir / RUN_FILE).read_text())
        if saved.get("kind") == "sweep":
            raise ConfigError(f"--resume {run_dir.name}: that is a sweep; resume it with the experiment file holding its sweep section")
        # The run keeps its saved config; overrides given with --resume (e.g. more epochs) apply on top.
        cfg = validate_config(apply_overrides(saved["config"], list(overrides or [])), f"{run_dir / RUN_FILE}")
        run_name, uri = saved["run_name"], saved["tracking_uri"]
    else:
        run_name = cfg.tracking.run_name or default_run_name(cfg)
        run_dir = experiment_dir(cfg) / run_name
        if (run_dir / RUN_FILE).exists():
            raise ConfigError(
                f"tracking.run_name={run_name}: a run of that name exists in {run_dir.parent}; "
                "pick another name or pass --resume to continue it"
            )
    _absolute_data_paths(cfg)
    # Everything that can be checked is checked before an MLflow run is opened or changed.
    check_writable(run_dir.parent)
    check_reachable(uri)
    if saved is None:
        resolve_init(cfg, uri)
    _check_data_here(cfg)
    if saved is not None:
        _check_latest_checkpoint(run_dir, dump_config(cfg))
    started_ray = _ray_init(cfg, uri)
    run_id: Optional[str] = None
    status = "FAILED"
    try:
        _check_resources(cfg)
        if saved is not None:
            run_id = saved["mlflow_run_id"]
            reopen_run(uri, run_id)
            print(f"resuming run {run_name} (MLflow run {run_id})", flush=True)
        else:
            run_id = _open_run(cfg, uri, run_name, run_dir, config_file)
        try:
            result = _fit(cfg, run_name, run_dir, uri, run_id)
        except (KeyboardInterrupt, SystemExit):
            # Ray Train's own SIGINT handler aborts the run and may exit through SystemExit.
            result = None
        metrics = dict(result.metrics or {}) if result is not None else {}
        if "test_error" not in metrics:  # only the final report carries the test metrics
            status = "KILLED"
            raise Interrupted(
                f"run {run_name} was interrupted; its last checkpoint is kept: continue it with --resume {run_name}"
            )
        status = "FINISHED"
        return RunResult(run_name, run_dir, run_id, uri, metrics)
    finally:
        if run_id is not None:
            try:
                end_run(uri, run_id, status)
            except Exception:  # noqa: BLE001 - never hide the original error behind a tracking hiccup
                pass
        if started_ray:
            import ray

            ray.shutdown()


def _check_latest_checkpoint(run_dir: Path, config_yaml: str) -> None:
    """Before resuming: when the run has checkpoints and none of them loads, stop here in one line
    (naming the newest) instead of inside a worker after Ray has started. Which readable checkpoint
    to continue from stays Ray Train's choice (its newest registered one)."""
    from attn.engine.checkpoint import load_checkpoint

    # Ray Train names them checkpoint_<timestamp>: the names sort by time.
    checkpoints = sorted((p for p in run_dir.glob("checkpoint_*") if p.is_dir()), reverse=True)
    first_error: Optional[CheckpointError] = None
    for path in checkpoints:
        try:
            load_checkpoint(path, expected_config=config_yaml)
            return
        except CheckpointError as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


def _open_run(cfg: ExperimentConfig, uri: str, run_name: str, run_dir: Path, config_file: Optional[str]) -> str:
    """Create the MLflow run and the run folder (with attn_run.json); return the MLflow run id."""
    exp_id = ensure_experiment(uri, cfg.tracking.experiment_name or "default", cfg.tracking.artifact_location)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"ray.storage_path: cannot create {run_dir} ({exc.strerror})") from None
    run_id = start_run(uri, exp_id, cfg, run_name, config_file=config_file)
    record = {"run_name": run_name, "mlflow_run_id": run_id, "tracking_uri": uri, "config": cfg.to_dict()}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2))
    print(f"run {run_name}: MLflow run {run_id} in {uri}", flush=True)
    return run_id


def make_trainer(cfg: ExperimentConfig, name: str, storage_path: Path, uri: str, run_id: str, callbacks=()):
    """The ``TorchTrainer`` of one run: ``cfg.ray.num_workers`` workers running the per-worker loop,
    logging to MLflow run ``run_id``; its Ray Train run ``name`` lives under ``storage_path``."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from attn.distributed.worker import train_loop_per_worker

    r = cfg.ray
    resources = {"CPU": r.cpus_per_worker}
    if r.gpus_per_worker > 0:
        resources["GPU"] = r.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "mlflow": {"uri": uri, "run_id": run_id}},
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
            failure_config=FailureConfig(max_failures=r.max_failures),
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
        raise _explain_failure(exc, run_name) from None
