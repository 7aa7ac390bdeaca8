"""Where trained weights come from, for ``run.py eval SOURCE`` and ``train.init_from``.

A source is one of:

    an MLflow run id (32 hex digits)        the run's best weights: checkpoint/best_model.pt + config.yaml
    experiment:NAME                         the newest finished run of MLflow experiment NAME
    runs:/RUN_ID/model, models:/NAME/V ...  an MLflow PyTorch model logged by attn (its config inside)
    a path                                  best_model.pt (config.yaml beside it), a checkpoint folder
                                            (best_model.pt + config.yaml), a run folder under runs/ (its
                                            newest checkpoint), or a saved MLflow model folder (MLmodel)

:func:`load_source` returns the weights as a state dict and the config they were trained with.
Checkpoint files are read with ``weights_only=True``. MLflow models are pickled: one from a store
is unpickled only when its files carry the digest its attn run recorded (``attn.model_digest``,
:mod:`attn.tracking.model_format`), so a replaced artifact or a model no attn run logged is refused;
a model folder on disk has no run to check it against and is unpickled with a plain note saying so.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from attn.engine.checkpoint import BEST_FILE, CONFIG_FILE, load_file
from attn.errors import CheckpointError, TrackingError
from attn.tracking import MODEL_DIGEST_TAG, download, folder_digest, get_run, model_run, newest_finished_run
from attn.tracking.model_format import is_model_folder, load_model_folder

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class TrainedWeights:
    state: dict[str, torch.Tensor]
    config_yaml: str
    label: str  # how to name the source in logs and tags
    run_id: Optional[str] = None  # the MLflow run the weights came from, if any
    experiment_id: Optional[str] = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _from_folder(folder: Path, label: str) -> TrainedWeights:
    if is_model_folder(folder):
        return _from_local_model(folder, label)
    if not (folder / BEST_FILE).is_file():
        # a run folder: its newest checkpoint_* holds the latest best weights
        ckpts = sorted((p for p in folder.rglob(BEST_FILE) if p.parent.name.startswith("checkpoint")), key=lambda p: p.parent.name)
        if not ckpts:
            raise CheckpointError(
                f"{folder}: no {BEST_FILE} here or in a checkpoint_* folder below; give a checkpoint folder, "
                "a best_model.pt, a run folder, an MLflow run id or a model URI"
            )
        folder = ckpts[-1].parent
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(f"{folder}: {CONFIG_FILE} missing next to {BEST_FILE}; the model's config is needed to rebuild it")
    return TrainedWeights(load_file(folder / BEST_FILE), config.read_text(), label)


def _from_mlflow_model_dir(folder: Path, label: str) -> TrainedWeights:
    try:
        state, config_yaml = load_model_folder(folder)
    except ValueError as exc:
        raise CheckpointError(f"{label}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - MLflow and pickle raise many types
        raise CheckpointError(f"{label}: cannot load the MLflow model ({_first_line(exc)})") from None
    return TrainedWeights(state, config_yaml, label)


def _from_local_model(folder: Path, label: str) -> TrainedWeights:
    print(f"note: {label} is an MLflow model folder on disk; loading it unpickles it, which runs code from the "
          "folder: load only folders you trust (a checkpoint's best_model.pt is read as weights only)",
          file=sys.stderr, flush=True)
    return _from_mlflow_model_dir(folder, label)


def _check_logged_by_attn(local: Path, uri: str, tracking_uri: str) -> str:
    """The id of the attn run that logged the model downloaded to ``local``; refuses (before anything
    is unpickled) a model whose files are not the ones that run recorded."""
    run_id = model_run(tracking_uri, uri)
    if run_id is None:
        raise CheckpointError(
            f"{uri}: attn unpickles only MLflow models an attn run of this store logged, and this URI names no "
            "run; give runs:/RUN_ID/model, a registered models:/NAME/VERSION, or the run id (weights only)"
        )
    recorded = get_run(tracking_uri, run_id).tags.get(MODEL_DIGEST_TAG)
    if recorded is None:
        raise CheckpointError(
            f"{uri}: run {run_id} recorded no {MODEL_DIGEST_TAG} (an attn run logs one with its model), so attn "
            f"does not unpickle this model; load the run's checkpoint instead: its run id {run_id} (weights only)"
        )
    if folder_digest(local) != recorded:
        raise CheckpointError(
            f"{uri}: the model's files are not the ones run {run_id} logged (their digest differs from its "
            f"{MODEL_DIGEST_TAG}), so attn does not unpickle them; load the run's checkpoint by its run id {run_id}"
        )
    return run_id


def _from_model_uri(uri: str, tracking_uri: str) -> TrainedWeights:
    # The download only lives until the weights are in memory.
    with tempfile.TemporaryDirectory(prefix="attn-model-") as tmp:
        try:
            local = download(tracking_uri, Path(tmp), artifact_uri=uri)
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(f"cannot fetch the MLflow model {uri} from {tracking_uri} ({_first_line(exc)})") from None
        run_id = _check_logged_by_attn(local, uri, tracking_uri)
        weights = _from_mlflow_model_dir(local, uri)
    weights.run_id = run_id
    return weights


def _from_run(run_id: str, tracking_uri: str, label: str) -> TrainedWeights:
    run = get_run(tracking_uri, run_id, hint="give a run id from the MLflow UI, or a checkpoint path")
    with tempfile.TemporaryDirectory(prefix="attn-run-") as tmp:
        try:
            for name in (BEST_FILE, CONFIG_FILE):
                download(tracking_uri, Path(tmp), run_id=run_id, artifact_path=f"checkpoint/{name}")
        except Exception as exc:  # noqa: BLE001
            raise TrackingError(
                f"MLflow run {run_id} has no checkpoint/{BEST_FILE} and {CONFIG_FILE} (did it finish?): {_first_line(exc)}"
            ) from None
        weights = _from_folder(Path(tmp), label)
    weights.run_id, weights.experiment_id = run_id, run.experiment_id
    return weights


def load_source(source: str, tracking_uri: str) -> TrainedWeights:
    """The weights and config named by ``source`` (see the module docstring)."""
    source = source.strip()
    if source.startswith("experiment:"):
        run_id = newest_finished_run(tracking_uri, source[len("experiment:"):])
        return _from_run(run_id, tracking_uri, f"{source} (run {run_id})")
    if re.match(r"^(runs|models|mlflow-artifacts|s3|gs|wasbs|dbfs|http|https|file):", source):
        if source.startswith("file:"):
            from urllib.parse import unquote, urlparse

            return _load_path(Path(unquote(urlparse(source).path)), source)
        return _from_model_uri(source, tracking_uri)
    path = Path(source).expanduser()
    if path.exists():
        return _load_path(path, source)
    if _RUN_ID.match(source):
        return _from_run(source, tracking_uri, f"run {source}")
    raise CheckpointError(
        f"{source}: neither a file or folder, nor an MLflow run id (32 hex digits), nor experiment:NAME, nor a model "
        "URI (runs:/RUN_ID/model, models:/NAME/VERSION)"
    )


def _load_path(path: Path, label: str) -> TrainedWeights:
    if path.is_dir():
        return _from_folder(path, label)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.name == "MLmodel":
        return _from_local_model(path.parent, label)
    config = path.parent / CONFIG_FILE
    if not config.is_file():
        raise CheckpointError(f"{path}: {CONFIG_FILE} missing beside it; the model's config is needed to rebuild it")
    return TrainedWeights(load_file(path), config.read_text(), label)
