"""Writing into one MLflow run from a training worker, without ever making training wait on MLflow."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional

from attn.errors import TrackingError
from attn.tracking.model_format import MODEL_ARTIFACT, MODEL_DIGEST_TAG, MODEL_ID_TAG, folder_digest, save_model
from attn.tracking.store import mlflow_client


def _metric_batch(metrics: dict[str, Any], step: int) -> list:
    """The numeric entries of ``metrics`` as MLflow ``Metric`` objects at ``step``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]


# MLflow's HTTP limits for the tracker's own requests: fail fast inside MLflow (its default is 7 retries
# with growing waits, minutes per call); the tracker does the retrying, without blocking training.
_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


@contextmanager
def _fail_fast_requests():
    """:data:`_FAIL_FAST` in the environment (where MLflow reads it) while the tracker writes, for the
    variables the user did not set; the process's environment is as it was afterwards, so other MLflow
    clients of the process keep MLflow's own limits."""
    added = {k: v for k, v in _FAIL_FAST.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def fail_fast_in_this_process() -> None:
    """:data:`_FAIL_FAST` for every MLflow client of the calling process (values the user set are
    kept): for a training worker, where MLflow's system-metrics thread writes beside the tracker and
    would otherwise hold the run's end for minutes of retries while the server is away."""
    for key, value in _FAIL_FAST.items():
        os.environ.setdefault(key, value)


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
        self.uri, self.run_id, self.retry_timeout_s, self._log = uri, run_id, retry_timeout_s, log
        self.epoch_key = epoch_key
        self.client = mlflow_client(uri)
        # ("metrics", (step, [Metric])) | ("artifact", (path, dir)) | ("tag", (k, v)) | ("sync", history)
        # | ("model", {folder, digest, step, metrics, done: the steps already delivered})
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

    def log_model(self, model: Any, config_yaml: str, metrics: Optional[dict[str, Any]] = None, step: int = 0) -> None:
        """``model`` in MLflow's PyTorch format, with the training config inside
        (:mod:`attn.tracking.model_format`), as an MLflow 3 logged model named ``model`` whose source is
        this run: listed in the experiment's Models view, loadable as ``runs:/<run id>/model`` and
        ``models:/<model id>``. ``metrics`` (e.g. the test errors) are logged to the run at ``step``,
        linked to the model."""
        folder = save_model(model, config_yaml, self._spool_folder())
        self._submit(("model", {"folder": str(folder), "digest": folder_digest(folder), "step": step,
                                "metrics": dict(metrics or {}), "done": []}))

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

    def _spool_folder(self) -> Path:
        """A new empty folder in the spool (made on first use; :meth:`close` removes it)."""
        self._spool = self._spool or tempfile.mkdtemp(prefix="attn-mlflow-spool-")
        return Path(tempfile.mkdtemp(dir=self._spool))

    def _spooled(self, item: tuple[str, Any]) -> tuple[str, Any]:
        # The caller may delete its file as soon as we return: keep a copy until it is delivered.
        path, artifact_path = item[1]
        target = self._spool_folder() / Path(path).name
        if Path(path).is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)
        return ("artifact", (str(target), artifact_path))

    def _flush(self) -> bool:
        with _fail_fast_requests():
            return self._flush_pending()

    def _flush_pending(self) -> bool:
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
                elif kind == "model":
                    self._model_now(payload)
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

    def _model_now(self, item: dict[str, Any]) -> None:
        """The steps of a logged model, each done once however often a failure retries the item."""
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, RunTag

        done = item["done"]
        if "created" not in done:
            experiment = self.client.get_run(self.run_id).info.experiment_id
            logged = self.client.create_logged_model(
                experiment, name=MODEL_ARTIFACT, source_run_id=self.run_id, model_type="attn",
                tags={MODEL_DIGEST_TAG: item["digest"]},
            )
            item["model_id"] = logged.model_id
            done.append("created")
        model_id = item["model_id"]
        if "uploaded" not in done:
            self.client.log_model_artifacts(model_id, item["folder"])
            done.append("uploaded")
        if "ready" not in done:
            # the digest the loader checks before unpickling lives in the tracking store, beside the run
            self.client.log_batch(self.run_id, tags=[RunTag(MODEL_DIGEST_TAG, item["digest"]),
                                                     RunTag(MODEL_ID_TAG, model_id)])
            self.client.finalize_logged_model(model_id, LoggedModelStatus.READY)
            self.client.log_outputs(self.run_id, [LoggedModelOutput(model_id, item["step"])])
            done.append("ready")
        if "metrics" not in done:
            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, item["step"], model_id=model_id, run_id=self.run_id)
                     for k, v in item["metrics"].items() if isinstance(v, (int, float))]
            if batch:
                self.client.log_batch(self.run_id, metrics=batch)
            done.append("metrics")

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
