"""One run's life, the same for a single run, a sweep and an evaluation: plan, Ray session, close.

1. :func:`plan_run` fixes everything before any work: the run's name and folder (or the run that
   ``--resume`` continues, with its saved config), absolute storage, tracking and data paths, and
   the checks that fail in one line (a folder that cannot be written, an MLflow server that does not
   answer, ``train.init_from`` that does not load, a missing dataset, an unreadable checkpoint).
2. :func:`ray_session` starts Ray here (or joins ``ray.address``) for the body, and stops what it
   started.
3. :func:`tracked` closes the MLflow run as FINISHED, KILLED or FAILED, whatever happens inside.

Storage layout (``ray.storage_path``, else ``$ATTN_STORAGE_PATH``, else ``./runs``)::

    runs/<experiment>/<run or sweep name>/              Ray Train's (or Tune's) folders
    runs/<experiment>/<run or sweep name>/attn_run.json the record: kind, name, MLflow run id, config
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from attn.config import ExperimentConfig, apply_overrides, check_storage_folder, dump_config, validate_config
from attn.data import check_data
from attn.errors import AttnError, CheckpointError, ConfigError
from attn.tracking import check_reachable, end_run, newest_finished_run, open_store, resolve_tracking_uri

RUN_FILE = "attn_run.json"


def slug(text: str) -> str:
    """``text`` as a folder name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def default_name(cfg: ExperimentConfig, kind: str) -> str:
    """A run: ``<task>-<model>-<core>-g<glimpses>-<time>``; a sweep: ``sweep-<experiment>-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if kind == "sweep":
        return slug(f"sweep-{cfg.tracking.experiment_name or 'default'}-{stamp}")
    m = cfg.model
    glimpses = m.num_glimpses if m.name == "ram" else m.glimpses_per_digit
    return slug(f"{cfg.data.task}-{m.name}-{m.core.kind}-g{glimpses}-{stamp}")


@dataclass
class RunPlan:
    """Where a run lives and with which config, fixed before any work.

    kind: "run" or "sweep". record: the saved ``attn_run.json`` of the run ``--resume`` continues
    (None for a new run)."""

    kind: str
    name: str
    dir: Path
    uri: str
    cfg: ExperimentConfig
    record: Optional[dict[str, Any]] = None

    @property
    def resumed(self) -> bool:
        return self.record is not None

    @property
    def mlflow_run_id(self) -> Optional[str]:
        """The MLflow run of a resumed run (a sweep's parent run)."""
        if self.record is None:
            return None
        return self.record.get("mlflow_run_id") or self.record.get("parent_run_id")

    def create_folder(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"ray.storage_path: cannot create {self.dir} ({exc.strerror})") from None

    def write_record(self, mlflow_run_id: str) -> None:
        """The run's ``attn_run.json`` in its folder (what ``--resume`` reads back)."""
        self.create_folder()
        record = {"kind": self.kind, "name": self.name, "mlflow_run_id": mlflow_run_id,
                  "tracking_uri": self.uri, "config": self.cfg.to_dict()}
        (self.dir / RUN_FILE).write_text(json.dumps(record, indent=2))


# -- where things go --------------------------------------------------------------------------------
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


def experiment_dir(cfg: ExperimentConfig) -> Path:
    return storage_root(cfg) / slug(cfg.tracking.experiment_name or "default")


def resolve_locations(cfg: ExperimentConfig) -> str:
    """Fix where the run lives before it is recorded: the storage folder and the tracking URI become
    absolute values in ``cfg`` (so the saved config says where they were); returns the URI."""
    cfg.ray.storage_path = str(storage_root(cfg))
    cfg.tracking.tracking_uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    return cfg.tracking.tracking_uri


def absolute_data_paths(cfg: ExperimentConfig) -> None:
    """Relative data paths mean: from ``$ATTN_DATA_ROOT`` if set (a cluster sets it to its shared
    folder, since a submitted job runs in a throwaway copy of the project), else from where run.py was
    started. Ray workers run in other folders, so they receive the absolute paths (also what the run
    records)."""
    base = Path(os.environ.get("ATTN_DATA_ROOT") or os.getcwd()).expanduser()

    def absolute(value: str) -> str:
        return str((base / Path(value).expanduser()).resolve())

    for key in ("data_dir", "cache_dir"):
        value = getattr(cfg.data, key, None)
        if value is not None:
            setattr(cfg.data, key, absolute(value))
    ctx = getattr(cfg.model, "context", None)
    for key in ("weights", "vit_config"):
        value = getattr(ctx, key, None)
        if value is not None and value != "imagenet":
            setattr(ctx, key, absolute(value))


# -- checks before any work -------------------------------------------------------------------------
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


def resolve_init(cfg: ExperimentConfig, uri: str) -> None:
    """Check ``train.init_from`` before any work and pin it: ``experiment:NAME`` becomes the run id it
    means now, a relative path an absolute one (workers run elsewhere); the run records that value."""
    source = cfg.train.init_from
    if not source:
        return
    from attn.sources import load_source

    if source.startswith("experiment:"):
        run_id = newest_finished_run(uri, source[len("experiment:"):])
        print(f"train.init_from: {source} is run {run_id}", flush=True)
        source = run_id
    elif "://" not in source and ":/" not in source and Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())
    load_source(source, uri)  # readable now, or one line now
    cfg.train.init_from = source


CLUSTER_RETRIES = 3
"""ray.max_failures and sweep.trial_retries when they are None and the run joins a cluster."""


def joins_cluster(cfg: ExperimentConfig) -> bool:
    """The run joins a running cluster (ray.address or RAY_ADDRESS) instead of starting Ray here."""
    return bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))


def resolve_failures(cfg: ExperimentConfig) -> None:
    """Pin ray.max_failures and sweep.trial_retries (None: 3 on a cluster, 0 on this machine's Ray)."""
    n = CLUSTER_RETRIES if joins_cluster(cfg) else 0
    resolved = []
    if cfg.ray.max_failures is None:
        cfg.ray.max_failures = n
        resolved.append(f"ray.max_failures {n}")
    if cfg.sweep is not None and cfg.sweep.trial_retries is None:
        cfg.sweep.trial_retries = n
        resolved.append(f"sweep.trial_retries {n}")
    if resolved and n:
        print(f"on a cluster: {' and '.join(resolved)} (a lost node's work restarts from its last checkpoint; "
              "set them to 0 to fail instead)", flush=True)


def check_data_here(cfg: ExperimentConfig) -> None:
    """Fail on a missing or corrupt dataset before any run is opened, in one line, not inside a Ray
    worker. On a cluster the workers read their own copies, so the check is left to them."""
    if not joins_cluster(cfg):
        check_data(cfg.data)
        if cfg.model.name == "dram":
            from attn.models.build import check_context_files

            check_context_files(cfg.model.context)


def check_latest_checkpoint(run_dir: Path, config_yaml: str) -> None:
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


# -- planning ---------------------------------------------------------------------------------------
def _find_record(cfg: ExperimentConfig, name: Optional[str]) -> Path:
    """The folder of the run to resume: ``name`` if given, else the newest run of the experiment."""
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


def _resumed(cfg: ExperimentConfig, kind: str, name: Optional[str], overrides: list[str]) -> RunPlan:
    run_dir = _find_record(cfg, name)
    record = json.loads((run_dir / RUN_FILE).read_text())
    found = record.get("kind", "run")
    if found != kind:
        how = ("resume it with the experiment file holding its sweep section" if found == "sweep"
               else "resume it without the sweep section")
        raise ConfigError(f"--resume {run_dir.name}: that is a {'sweep' if found == 'sweep' else 'single run'}, "
                          f"not a {'sweep' if kind == 'sweep' else 'single run'}; {how}")
    # The run keeps its saved config; overrides given with --resume (e.g. more epochs) apply on top.
    saved_cfg = validate_config(apply_overrides(record["config"], overrides), str(run_dir / RUN_FILE))
    return RunPlan(kind, record.get("name") or record["run_name"], run_dir, record["tracking_uri"], saved_cfg, record)


def plan_run(
    cfg: ExperimentConfig,
    kind: str = "run",
    *,
    resume: bool = False,
    resume_name: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> RunPlan:
    """Name, folder and final config of a new run (``kind`` "run" or "sweep"), or of the run
    ``--resume`` continues; every check that can fail before Ray starts has passed when it returns."""
    uri = resolve_locations(cfg)
    if resume:
        plan = _resumed(cfg, kind, resume_name, list(overrides or []))
    else:
        name = cfg.tracking.run_name or default_name(cfg, kind)
        plan = RunPlan(kind, name, experiment_dir(cfg) / name, uri, cfg)
        if (plan.dir / RUN_FILE).exists():
            raise ConfigError(
                f"tracking.run_name={name}: a {'sweep' if kind == 'sweep' else 'run'} of that name exists in "
                f"{plan.dir.parent}; pick another name or pass --resume to continue it"
            )
    absolute_data_paths(plan.cfg)
    check_writable(plan.dir.parent)
    check_reachable(plan.uri)
    if not plan.resumed:  # a resumed run continues from its checkpoints; its init_from is pinned already
        resolve_init(plan.cfg, plan.uri)
    resolve_failures(plan.cfg)
    check_data_here(plan.cfg)
    if plan.resumed and kind == "run":
        check_latest_checkpoint(plan.dir, dump_config(plan.cfg))
    return plan


# -- Ray --------------------------------------------------------------------------------------------
@contextmanager
def ray_session(cfg: ExperimentConfig, uri: str) -> Iterator[None]:
    """Ray for the body: joined at ``ray.address`` (or RAY_ADDRESS), else started here and stopped
    at the end. Meanwhile the tracking store at ``uri`` opens in a thread
    (:func:`~attn.tracking.open_store`): both take seconds (importing MLflow; a new SQLite store
    creates its tables). It creates no experiment and no run."""
    opener = ThreadPoolExecutor(1, thread_name_prefix="attn-store")
    store = opener.submit(open_store, uri)
    opener.shutdown(wait=False)
    try:
        started = start_ray(cfg)
    finally:
        store.result()
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


def start_ray(cfg: ExperimentConfig) -> bool:
    """Connect to ``ray.address`` (or RAY_ADDRESS), else start Ray here. True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # MLflow's progress bars for each artifact a worker logs would fill the console between epochs
    bars = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    runtime_env = {"env_vars": {"PYTHONUNBUFFERED": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": bars}}
    # Ray Train's helpers (the placement-group cleaner, the state actor) find their cluster through
    # the state API, which without RAY_ADDRESS picks whichever Ray runs on the machine or fails when
    # there are several: a stopped trial's placement group then stays reserved and starves the next.
    quiet = _quiet_console()
    if address:
        if re.fullmatch(r"[\w.\-]+:\d+", address):
            runtime_env["env_vars"]["RAY_ADDRESS"] = address
        try:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise AttnError(
                f"ray.address={address}: cannot connect to the Ray cluster ({str(exc).splitlines()[0][:200]})"
            ) from None
    else:
        with _own_gcs_port() as port:
            runtime_env["env_vars"]["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
            # Ray Train's preemption watcher is for cluster nodes a cloud can take back; this one-machine
            # Ray has none, and the watcher's start-up logs a core-worker error line on every run
            runtime_env["env_vars"]["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = os.environ.get(
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            # Ray's dashboard stays on although attn does not show it: Ray Train's placement-group
            # cleaner asks its state API whether the run's controller lives, and without it removes
            # the workers' placement group at once (the run fails in its first second)
            ray.init(runtime_env=runtime_env, log_to_driver=True, configure_logging=True, logging_level="warning",
                     **quiet)
    return True


def _quiet_console() -> dict:
    """What keeps Ray's own noise off the console: a job logging config (with one, Ray forwards the
    workers' lines without its coloured ``(RayTrainWorker pid=...)`` prefix, so the console reads as
    attn's lines; a sweep's trials prefix theirs with the trial id), and no notice that the local
    cluster it starts uses token authentication (the default; it is not a problem to act on)."""
    import ray

    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    return {"logging_config": ray.LoggingConfig(encoding="TEXT", log_level="WARNING")}


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


# -- MLflow -----------------------------------------------------------------------------------------
@dataclass
class TrackedRun:
    """The MLflow run a body opens (``run_id``, None until it does) and how it ends: ``status`` stays
    FAILED unless the body sets FINISHED or KILLED."""

    uri: str
    run_id: Optional[str] = None
    status: str = "FAILED"


@contextmanager
def tracked(uri: str, run_id: Optional[str] = None) -> Iterator[TrackedRun]:
    """Close the body's MLflow run with its status, whatever happens (a tracking hiccup at the close
    never hides the body's own error)."""
    run = TrackedRun(uri, run_id)
    try:
        yield run
    finally:
        if run.run_id is not None:
            try:
                end_run(uri, run.run_id, run.status)
            except Exception:  # noqa: BLE001
                pass
