"""The tracking store: URIs, experiments, runs, tags, child runs and artifacts, by MLflow run id.

The driver creates the experiment and the run (params = the resolved config, flattened; the config
file as an artifact) before any worker starts, and closes it with the run's final status; rank 0 of
the workers writes into that run through :class:`attn.tracking.writer.MlflowTracker`. Only absolute
tracking URIs are used: Ray workers run in other working directories. Every failure of the store
becomes one :class:`~attn.errors.TrackingError` line.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

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
                _check_credentials(uri, timeout_s)
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


def _check_credentials(uri: str, timeout_s: float) -> None:
    """A server with authentication (MLflow's basic-auth app, as on an attn cluster) refuses a run
    without the right credentials: one line now, naming the variables, not a traceback later. The
    credentials are the ones MLflow's client sends (MLFLOW_TRACKING_USERNAME / _PASSWORD, or
    MLFLOW_TRACKING_TOKEN)."""
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"])
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:
        if exc.code not in (401, 403):
            return  # not a question of credentials: the calls that follow report it
        code = exc.code
    except (urllib.error.URLError, OSError):
        return
    if user and password:
        raise TrackingError(f"the MLflow server at {uri} refused the credentials of user {user!r} (HTTP {code}); "
                            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    raise TrackingError(
        f"the MLflow server at {uri} needs credentials (HTTP {code}): set MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD (on an attn cluster: `. /mnt/shared/attn/.mlflow/credentials`, which every node's "
        "~/.attn/cluster.env reads)"
    )


def mlflow_client(uri: str):
    """An MlflowClient of the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def open_store(uri: str) -> None:
    """Import MLflow and open the store at ``uri`` (a new SQLite store creates its tables, which takes
    seconds), so that the calls that follow are quick. It creates no experiment and no run; a store
    that fails here fails again in those calls, which report it in one line."""
    # its "Creating initial MLflow database tables..." lines say nothing a user acts on
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    try:
        mlflow_client(uri).search_experiments(max_results=1)
    except Exception:  # noqa: BLE001 - ensure_experiment / reopen_run raise the TrackingError
        pass


def run_history(uri: str, ref: str, keys: tuple[str, ...] = ("val_error", "epoch_time_s")) -> tuple[str, list[dict]]:
    """A run's per-epoch curves: ``ref`` is a run id or a run name (the newest run of that name in any
    experiment) -> (run name, one dict per logged epoch with ``epoch`` and each of ``keys``)."""
    client = mlflow_client(uri)
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


EXPERIMENT_KIND = "mlflow.experimentKind"


def ensure_experiment(uri: str, name: str, artifact_location: Optional[str] = None) -> str:
    """Id of experiment ``name``, created (with an absolute artifact root) if missing."""
    try:
        client = mlflow_client(uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"MLflow experiment '{name}' at {uri} is deleted; restore it or set tracking.experiment_name"
                )
            return exp.experiment_id
        location = artifact_location or default_artifact_location(uri)
        # the kind MLflow 3's UI files training experiments under (its GenAI pages are for agents)
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND: "custom_model_development"})
    except TrackingError:
        raise
    except Exception as exc:  # MLflow raises many types for an unreachable or broken store
        raise TrackingError(f"cannot use the MLflow tracking store {uri}: {str(exc).splitlines()[0][:300]}") from None


def git_commit(cwd: Optional[Path] = None) -> Optional[str]:
    """The commit of the attn source that runs (not of the working directory), '-dirty' if modified."""
    head = _git("rev-parse", "HEAD", cwd=cwd)
    if head is None:
        return None
    return head + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no", cwd=cwd) else "")


def ui_link(uri: str, run_id: str) -> str:
    """Where the MLflow UI shows run ``run_id``, opened on the model-training views (MLflow 3 opens on
    its GenAI pages otherwise). A local store has no server: the link is the one `mlflow ui` serves,
    with the command that serves it."""
    try:
        experiment_id = mlflow_client(uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a link is a convenience: never fail a run over it
        return f"(MLflow UI link unavailable: {uri} did not answer)"
    route = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{route}"
    return f"http://127.0.0.1:5000/{route} (after: mlflow ui --backend-store-uri {uri})"


def _git(*args: str, cwd: Optional[Path] = None) -> Optional[str]:
    """``git ARGS`` in ``cwd`` (the attn source folder), its output or None (no git, not a checkout,
    no such ref, nothing printed)."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd or Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        return out or None
    except (OSError, subprocess.SubprocessError):
        return None


def source_tags() -> dict[str, str]:
    """MLflow's standard tags of who ran what from where (the UI's User and Source columns): the
    user, ``run.py`` as the entry point (also for a sweep's trials, which Ray starts elsewhere), and
    the git commit, branch and remote of the attn source; ``git_commit`` adds '-dirty' if modified."""
    import getpass

    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "run.py"}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):  # no entry for this uid (some containers)
        pass
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
        for key, args in (("branch", ("rev-parse", "--abbrev-ref", "HEAD")), ("repoURL", ("remote", "get-url", "origin"))):
            value = _git(*args)
            if value and value != "HEAD":
                tags[f"mlflow.source.git.{key}"] = value
    return tags


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

    client = mlflow_client(uri)
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
    tags.update(source_tags())
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
        client = mlflow_client(uri)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "attn.status", "running")
    except Exception as exc:
        raise TrackingError(f"cannot reopen MLflow run {run_id} at {uri}: {str(exc).splitlines()[0][:300]}") from None


def end_run(uri: str, run_id: str, status: str, attempts: int = 4) -> None:
    """Close the run with MLflow status FINISHED, FAILED or KILLED (retried: the server may be
    restarting at that moment)."""
    client = mlflow_client(uri)
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


@dataclass
class RunRecord:
    """What attn reads back about an MLflow run."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _record(run) -> RunRecord:
    info, data = run.info, run.data
    return RunRecord(info.run_id, info.run_name or info.run_id, info.experiment_id, info.status,
                     dict(data.tags), dict(data.metrics))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def get_run(uri: str, run_id: str, hint: str = "give a run id from the MLflow UI") -> RunRecord:
    """The run ``run_id`` at ``uri``; a missing run or store is one line ending with ``hint``."""
    try:
        return _record(mlflow_client(uri).get_run(run_id))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing run or store
        raise TrackingError(f"no MLflow run {run_id!r} at {uri} ({_first_line(exc)}); {hint}") from None


def child_runs(uri: str, experiment_id: str, parent_run_id: str, tags: Optional[dict[str, str]] = None) -> list[RunRecord]:
    """The runs under ``parent_run_id`` (a sweep's trials), optionally only those with ``tags``."""
    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    for key, value in (tags or {}).items():
        query += f" and tags.`{key}` = '{value}'"
    return [_record(r) for r in mlflow_client(uri).search_runs([experiment_id], filter_string=query)]


def newest_finished_run(uri: str, experiment: str) -> str:
    """The id of the newest FINISHED training run of experiment ``experiment`` (sweep parents and
    evaluations hold no weights of their own and are skipped)."""
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"experiment:{experiment}: no MLflow experiment of that name at {uri}")
    runs = client.search_runs(
        [exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.end_time DESC"], max_results=200,
    )
    runs = [r for r in runs if r.data.tags.get("attn.kind") not in ("sweep", "eval")]
    if not runs:
        raise TrackingError(f"experiment:{experiment}: no finished training run in that MLflow experiment at {uri}")
    return runs[0].info.run_id


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    mlflow_client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metric(uri: str, run_id: str, key: str, value: float) -> None:
    mlflow_client(uri).log_metric(run_id, key, float(value))


def log_artifact(uri: str, run_id: str, path: str, artifact_path: Optional[str] = None) -> None:
    mlflow_client(uri).log_artifact(run_id, str(path), artifact_path)


def end_killed(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Close a run as KILLED with ``tags`` (a trial stopped early, or cut by an interruption)."""
    set_tags(uri, run_id, tags)
    mlflow_client(uri).set_terminated(run_id, status="KILLED")


def artifact_listing(uri: str, run_id: str, path: str = "") -> dict[str, bool]:
    """The artifacts directly under ``path`` of the run: {artifact path: is a folder}."""
    return {f.path: f.is_dir for f in mlflow_client(uri).list_artifacts(run_id, path or None)}


def _registered_model(uri: str, model_uri: str) -> Optional[tuple[Optional[str], str]]:
    """(run id, artifact location) of a ``models:/`` URI: a registered version ``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS``, or an MLflow 3 logged model ``models:/m-ID``; None for any other URI."""
    import re

    m = re.match(r"^models:/([^/@]+)(?:/([^/]+)|@([^/]+))?/?$", model_uri)
    if not m:
        return None
    name, version, alias = m.groups()
    client = mlflow_client(uri)
    try:
        if version is None and alias is None:
            logged = client.get_logged_model(name)
            return logged.source_run_id, logged.artifact_location
        found = client.get_model_version(name, version) if alias is None else client.get_model_version_by_alias(name, alias)
        return found.run_id, client.get_model_version_download_uri(name, found.version)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing model
        raise TrackingError(f"no MLflow model {model_uri} at {uri} ({_first_line(exc)})") from None


def _run_model_location(uri: str, runs_uri: str) -> Optional[str]:
    """Where ``runs:/RUN_ID/NAME[/path]`` lies when NAME is an MLflow 3 logged model of that run (its
    artifact location, plus the path); None when the run logged no such model (a plain artifact)."""
    run_id, _, rest = runs_uri[len("runs:/"):].partition("/")
    name, _, sub = rest.partition("/")
    if not (run_id and name):
        return None
    client = mlflow_client(uri)
    try:
        experiment = client.get_run(run_id).info.experiment_id
        models = client.search_logged_models([experiment], filter_string=f"name = '{name}'")
    except Exception:  # noqa: BLE001 - a missing run: the plain download says so
        return None
    found = next((m for m in models if m.source_run_id == run_id), None)
    if found is None:
        return None
    return found.artifact_location.rstrip("/") + (f"/{sub}" if sub else "")


def model_run(uri: str, model_uri: str) -> Optional[str]:
    """The id of the run that logged the model ``model_uri`` names (``runs:/RUN_ID/...`` or a
    ``models:/`` URI, see :func:`_registered_model`); None for a URI that names no run."""
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/"):].split("/", 1)[0] or None
    found = _registered_model(uri, model_uri)
    return found[0] if found else None


def download(uri: str, dest: Path, *, run_id: Optional[str] = None, artifact_path: str = "",
             artifact_uri: Optional[str] = None) -> Path:
    """Fetch a run's artifact (``run_id`` + ``artifact_path``) or any ``artifact_uri`` (``runs:/...``,
    ``models:/...``) into ``dest``; returns the local path (MLflow keeps the last part of the name)."""
    from mlflow.artifacts import download_artifacts

    Path(dest).mkdir(parents=True, exist_ok=True)
    if artifact_uri is not None:
        # MLflow would look models up in the default store, not at uri: resolve them here
        registered = _registered_model(uri, artifact_uri)
        if registered is not None:
            artifact_uri = registered[1]
        elif artifact_uri.startswith("runs:/"):
            artifact_uri = _run_model_location(uri, artifact_uri) or artifact_uri
        local = download_artifacts(artifact_uri=artifact_uri, dst_path=str(dest), tracking_uri=uri)
    else:
        local = download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dest), tracking_uri=uri)
    return Path(local)
