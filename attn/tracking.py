"""MLflow tracking: one MLflow run per training run.

The driver creates the experiment and the run (params = the resolved config, flattened; the config
file as an artifact) before any worker starts, and closes it with the run's final status. Rank 0 of
the workers logs per-epoch metrics and artifacts into that run by id through :class:`MlflowTracker`.
Only absolute tracking URIs are used: Ray workers run in other working directories.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

from attn.config import ExperimentConfig, dump_config, flatten
from attn.errors import TrackingError

_MAX_PARAM_LEN = 6000


def resolve_tracking_uri(uri: Optional[str], cwd: Optional[Path] = None) -> str:
    """None -> ``$MLFLOW_TRACKING_URI`` if set (a cluster sets it to the head's server), else
    ``sqlite:///<cwd>/mlflow.db``; relative sqlite/file paths become absolute."""
    cwd = Path(cwd or os.getcwd()).resolve()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        return f"sqlite:///{cwd / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(cwd / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:
        return (cwd / uri).resolve().as_uri()
    return uri


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """Before any work: an MLflow server that does not answer is one clear error, not minutes of
    retries followed by a traceback. Local stores (sqlite, file) are checked when first used."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc))
    raise TrackingError(
        f"cannot reach the MLflow server at {uri} ({reason}); start it, or point tracking.tracking_uri "
        "(or MLFLOW_TRACKING_URI) at a running one"
    )


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def open_store(uri: str) -> None:
    """Import MLflow and open the store at ``uri`` (a new SQLite store creates its tables, which takes
    seconds), so that the calls that follow are quick. It creates no experiment and no run; a store
    that fails here fails again in those calls, which report it in one line."""
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception:  # noqa: BLE001 - ensure_experiment / reopen_run raise the TrackingError
        pass


def run_history(uri: str, ref: str, keys: tuple[str, ...] = ("val_error", "epoch_time_s")) -> tuple[str, list[dict]]:
    """A run's per-epoch curves: ``ref`` is a run id or a run name (the newest run of that name in any
    experiment) -> (run name, one dict per logged epoch with ``epoch`` and each of ``keys``)."""
    client = _client(uri)
    try:
        run = client.get_run(ref)
    except Exception:  # noqa: BLE001 - not an id: look it up by name
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(experiments, filter_string=f"attributes.run_name = '{ref}'",
                                   order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
        if not found:
            raise TrackingError(f"no MLflow run with id or name {ref!r} at {uri}; give a run id or name from the MLflow UI") from None
        run = found[0]
    by_step: dict[int, dict] = {}
    for key in keys:
        for m in client.get_metric_history(run.info.run_id, key):
            by_step.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return run.info.run_name or run.info.run_id, [by_step[k] for k in sorted(by_step)]


def default_artifact_location(uri: str, cwd: Optional[Path] = None) -> Optional[str]:
    """For local stores, artifacts go to ``<cwd>/mlartifacts`` (absolute); servers choose their own."""
    if uri.startswith(("sqlite:", "file:")):
        return (Path(cwd or os.getcwd()).resolve() / "mlartifacts").as_uri()
    return None


def ensure_experiment(uri: str, name: str, artifact_location: Optional[str] = None) -> str:
    """Id of experiment ``name``, created (with an absolute artifact root) if missing."""
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"MLflow experiment '{name}' at {uri} is deleted; restore it or set tracking.experiment_name"
                )
            return exp.experiment_id
        location = artifact_location or default_artifact_location(uri)
        return client.create_experiment(name, artifact_location=location)
    except TrackingError:
        raise
    except Exception as exc:  # MLflow raises many types for an unreachable or broken store
        raise TrackingError(f"cannot use the MLflow tracking store {uri}: {str(exc).splitlines()[0][:300]}") from None


def git_commit(cwd: Optional[Path] = None) -> Optional[str]:
    """The commit of the attn source that runs (not of the working directory), '-dirty' if modified."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def start_run(
    uri: str,
    experiment_id: str,
    cfg: ExperimentConfig,
    run_name: str,
    config_file: Optional[str] = None,
    extra_tags: Optional[dict[str, str]] = None,
) -> str:
    """Create the MLflow run with the config as params and artifacts; return its id."""
    from mlflow.entities import Param, RunTag

    client = _client(uri)
    m = cfg.model
    glimpses = f"{m.num_glimpses} glimpses" if m.name == "ram" else f"{m.glimpses_per_digit} glimpses per digit"
    tags = {
        "task": cfg.data.task,
        "model": m.name,
        "core": m.core.kind,
        "glimpses": str(m.num_glimpses if m.name == "ram" else m.glimpses_per_digit),
        "mlflow.note.content": (
            f"{m.name.upper()} with a {m.core.kind} core, {glimpses} of "
            f"{m.retina.patch_size}px x {m.retina.num_scales} scale(s), on {cfg.data.task}"
        ),
    }
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    tags.update(extra_tags or {})
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    params = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in sorted(flatten(cfg.to_dict()).items())]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100], tags=[])
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "config.resolved.yaml"
        resolved.write_text(dump_config(cfg))
        client.log_artifact(run_id, str(resolved), "config")
        if config_file and Path(config_file).is_file():
            client.log_artifact(run_id, config_file, "config")
    client.log_batch(run_id, tags=[RunTag("attn.status", "running")])
    return run_id


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a resumed run as running again (it may have ended FINISHED, FAILED or KILLED)."""
    try:
        client = _client(uri)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "attn.status", "running")
    except Exception as exc:
        raise TrackingError(f"cannot reopen MLflow run {run_id} at {uri}: {str(exc).splitlines()[0][:300]}") from None


def end_run(uri: str, run_id: str, status: str, attempts: int = 4) -> None:
    """Close the run with MLflow status FINISHED, FAILED or KILLED (retried: the server may be
    restarting at that moment)."""
    client = _client(uri)
    for attempt in range(attempts):
        try:
            client.set_tag(run_id, "attn.status", status.lower())
            if status == "FINISHED":
                _note_results(client, run_id)
            client.set_terminated(run_id, status=status)
            return
        except Exception:  # noqa: BLE001
            if attempt == attempts - 1:
                raise
            time.sleep(2.0 * 2**attempt)


def _note_results(client, run_id: str) -> None:
    """Append the results line the workers tagged (``result.summary``) to the run's description, once."""
    tags = client.get_run(run_id).data.tags
    summary, note = tags.get("result.summary"), tags.get("mlflow.note.content", "")
    if summary and summary not in note:
        client.set_tag(run_id, "mlflow.note.content", f"{note}\n\n**Result:** {summary}".strip())


def _metric_batch(metrics: dict[str, Any], step: int) -> list:
    """The numeric entries of ``metrics`` as MLflow ``Metric`` objects at ``step``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]


class MlflowTracker:
    """Logs into an existing MLflow run by id (used on rank 0 of the workers).

    The server may go away during a run (restarted, network blip): a failed write is kept in a buffer,
    one warning is shown, and the buffer is retried with exponential backoff (1 s doubling to 60 s) at
    the next write, so training never waits on MLflow. :meth:`close` retries until ``retry_timeout_s``
    and raises :class:`TrackingError` only if the server stays away that long.

    Exactly once per epoch, across worker restarts: :meth:`sync` (called when a worker group starts)
    asks the run which epochs it holds (by ``epoch_key``), sends those of the checkpoint's history
    that never arrived (a buffer lost with a killed worker), and from then on drops epoch metrics for
    steps the run already holds (epochs re-run after a restart).
    """

    _MAX_BACKOFF_S = 60.0

    def __init__(
        self,
        uri: str,
        run_id: str,
        retry_timeout_s: float = 600.0,
        log: Callable[[str], None] = print,
        epoch_key: str = "val_error",
    ):
        # Fail fast inside MLflow (its default is 7 retries with growing waits, minutes per call);
        # this class does the retrying, without blocking training.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        self.uri, self.run_id, self.retry_timeout_s, self._log = uri, run_id, retry_timeout_s, log
        self.epoch_key = epoch_key
        self.client = _client(uri)
        # ("metrics", (step, [Metric])) | ("artifact", (path, dir)) | ("tag", (k, v)) | ("sync", history)
        self._pending: list[tuple[str, Any]] = []
        self._held_steps: set[int] = set()  # steps of epoch_key the run holds (known after a sync)
        self._spool: Optional[str] = None  # copies of artifacts waiting for the server
        self._retry_at = 0.0
        self._backoff = 1.0
        self._outage_since: Optional[float] = None

    # -- writes --------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self._submit(("metrics", (step, _metric_batch(metrics, step))))

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """A file, or a folder's contents (into ``artifact_path``)."""
        self._submit(("artifact", (path, artifact_path)))

    def log_model(self, model: Any, config_yaml: str) -> None:
        """``model`` in MLflow's PyTorch format under ``model/`` (``runs:/<run id>/model``), with the
        training config inside, so that ``mlflow.pytorch.load_model`` gives a working model."""
        import copy

        import mlflow
        import mlflow.pytorch
        import torch

        from attn.sources import MODEL_ARTIFACT, MODEL_CONFIG

        with tempfile.TemporaryDirectory(prefix="attn-model-") as tmp:
            config = Path(tmp) / MODEL_CONFIG
            config.write_text(config_yaml)
            cpu_model = copy.deepcopy(model).cpu().eval()
            # MLflow warns on every pickled save (the format we chose on purpose, see below)
            flavour_log = logging.getLogger("mlflow.pytorch")
            level = flavour_log.level
            flavour_log.setLevel(logging.ERROR)
            try:
                mlflow.pytorch.save_model(
                    cpu_model, str(Path(tmp) / MODEL_ARTIFACT), extra_files=[str(config)],
                    # the whole module pickled: an episode's control flow (glimpse loop, label slots, policy
                    # sampling) is Python, which the traced 'pt2' format would freeze
                    serialization_format="pickle",
                    # explicit: inferring them would load the model again in a subprocess
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
                )
            finally:
                flavour_log.setLevel(level)
            self.log_artifact(str(Path(tmp) / MODEL_ARTIFACT), MODEL_ARTIFACT)

    def set_tag(self, key: str, value: str) -> None:
        self._submit(("tag", (key, value)))

    def sync(self, history: list[dict[str, float]]) -> None:
        """At a worker group's start: send the epochs of ``history`` (from the checkpoint; each with
        its ``epoch``) the run lacks, and drop epochs it holds when they are logged again."""
        self._submit(("sync", list(history)))

    def close(self) -> None:
        """Deliver everything still buffered; wait for the server up to ``retry_timeout_s``."""
        deadline = time.time() + self.retry_timeout_s
        while self._pending:
            self._retry_at = 0.0
            if self._flush():
                break
            if time.time() >= deadline:
                raise TrackingError(
                    f"MLflow at {self.uri} stayed unreachable for {self.retry_timeout_s:.0f} s: {len(self._pending)} "
                    f"write(s) to run {self.run_id} not delivered (the run's checkpoints hold its results; "
                    "--resume after the server is back logs the missing epochs)"
                )
            time.sleep(min(self._backoff, max(0.0, deadline - time.time())))  # _flush grew the backoff
        if self._spool:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None

    # -- buffer ----------------------------------------------------------------------------------
    def _submit(self, item: tuple[str, Any]) -> None:
        if item[0] == "artifact" and (self._pending or time.time() < self._retry_at):
            item = self._spooled(item)
        self._pending.append(item)
        if time.time() >= self._retry_at:
            self._flush()

    def _spooled(self, item: tuple[str, Any]) -> tuple[str, Any]:
        # The caller may delete its file as soon as we return: keep a copy until it is delivered.
        path, artifact_path = item[1]
        self._spool = self._spool or tempfile.mkdtemp(prefix="attn-mlflow-spool-")
        target = Path(tempfile.mkdtemp(dir=self._spool)) / Path(path).name
        if Path(path).is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)
        return ("artifact", (str(target), artifact_path))

    def _flush(self) -> bool:
        from mlflow.entities import RunTag

        while self._pending:
            kind, payload = self._pending[0]
            try:
                if kind == "metrics":
                    step, batch = payload
                    epoch_metrics = any(m.key == self.epoch_key for m in batch)
                    if not (epoch_metrics and step in self._held_steps):
                        self.client.log_batch(self.run_id, metrics=batch)
                        if epoch_metrics:
                            self._held_steps.add(step)
                elif kind == "sync":
                    self._sync_now(payload)
                elif kind == "artifact":
                    if Path(payload[0]).is_dir():
                        self.client.log_artifacts(self.run_id, *payload)
                    else:
                        self.client.log_artifact(self.run_id, *payload)
                else:
                    self.client.log_batch(self.run_id, tags=[RunTag(*payload)])
            except Exception as exc:  # noqa: BLE001
                if kind == "artifact" and not (self._spool and payload[0].startswith(self._spool)):
                    self._pending[0] = self._spooled(self._pending[0])
                self._warn(exc)
                self._retry_at = time.time() + self._backoff
                self._backoff = min(2 * self._backoff, self._MAX_BACKOFF_S)
                return False
            self._pending.pop(0)
        if self._outage_since is not None:
            self._log(f"MLflow at {self.uri} is back after {time.time() - self._outage_since:.0f} s; buffered writes delivered")
            self._outage_since = None
        self._backoff = 1.0
        return True

    def _sync_now(self, history: list[dict[str, float]]) -> None:
        held = {m.step for m in self.client.get_metric_history(self.run_id, self.epoch_key)}
        for past in history:
            step = int(past["epoch"])
            if step not in held:
                self.client.log_batch(self.run_id, metrics=_metric_batch(past, step))
                held.add(step)
        self._held_steps = held

    def _warn(self, exc: BaseException) -> None:
        if self._outage_since is None:
            self._outage_since = time.time()
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            self._log(
                f"warning: MLflow at {self.uri} is unreachable ({reason}); training goes on, metrics are "
                "buffered and retried"
            )
