"""MLflow tracking: one MLflow run per training run.

The driver creates the experiment and the run (params = the resolved config, flattened; the config
file as an artifact) before any worker starts, and closes it with the run's final status. Rank 0 of
the workers logs per-epoch metrics and artifacts into that run by id through :class:`MlflowTracker`.
Only absolute tracking URIs are used: Ray workers run in other working directories.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

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


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


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


def end_run(uri: str, run_id: str, status: str) -> None:
    """Close the run with MLflow status FINISHED, FAILED or KILLED."""
    client = _client(uri)
    client.set_tag(run_id, "attn.status", status.lower())
    client.set_terminated(run_id, status=status)


class MlflowTracker:
    """Logs into an existing MLflow run by id (used on rank 0 of the workers)."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = _client(uri)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)
