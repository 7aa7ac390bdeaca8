"""MLflow, behind one door: the only package that imports ``mlflow``.

- :mod:`attn.tracking.store`: tracking URIs, reachability, experiments, runs (open, reopen, close),
  tags, child runs, metric histories, artifact upload and download;
- :mod:`attn.tracking.writer`: :class:`MlflowTracker`, how a training worker writes into its run
  (buffered, retried, each epoch exactly once);
- :mod:`attn.tracking.model_format`: a model in MLflow's PyTorch format with its attn config.

MLflow itself is imported inside the functions that use it: it takes seconds to import, and most
commands (a bad config, ``--help``) never need it.
"""

import os

# MLflow draws a progress bar per artifact it downloads or copies (a model folder loaded from disk
# too), between attn's own lines; a user who wants them sets the variable.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from attn.tracking.model_format import MODEL_ARTIFACT, MODEL_CONFIG, MODEL_DIGEST_TAG, folder_digest
from attn.tracking.store import (
    RunRecord,
    artifact_listing,
    check_reachable,
    child_runs,
    default_artifact_location,
    download,
    end_killed,
    end_run,
    ensure_experiment,
    get_run,
    git_commit,
    log_artifact,
    log_metric,
    model_run,
    newest_finished_run,
    open_store,
    reopen_run,
    resolve_tracking_uri,
    run_history,
    set_tags,
    start_run,
    ui_link,
)
from attn.tracking.writer import MlflowTracker, fail_fast_in_this_process

__all__ = [
    "MODEL_ARTIFACT", "MODEL_CONFIG", "MODEL_DIGEST_TAG", "MlflowTracker", "RunRecord", "artifact_listing",
    "check_reachable", "child_runs", "default_artifact_location", "download", "end_killed", "end_run",
    "ensure_experiment", "fail_fast_in_this_process", "folder_digest", "get_run", "git_commit", "log_artifact",
    "log_metric", "model_run",
    "newest_finished_run", "open_store", "reopen_run", "resolve_tracking_uri", "run_history", "set_tags", "start_run",
    "ui_link",
]
