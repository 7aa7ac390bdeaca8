"""A trained model in MLflow's PyTorch format, with the attn config inside, and reading it back.

Every run logs its best model as an MLflow 3 logged model named ``model`` (the experiment's Models
view; ``runs:/<run id>/model`` and ``models:/<model id>`` both name it): the whole module pickled
(an episode's control flow is Python, which the traced 'pt2' format would freeze), with the training
config as ``attn_config.yaml`` beside it, so that ``mlflow.pytorch.load_model`` gives a working model
and ``run.py eval`` can rebuild the architecture from the config.

Unpickling runs code, so attn unpickles only a model its own run wrote: when a run logs the model it
records a digest of the model's files as the run tag ``attn.model_digest`` (in the tracking store,
beside the run, not among the artifacts), and :func:`attn.sources.load_source` refuses a downloaded
model whose files do not have that digest (replaced artifacts, or a model no attn run logged).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from pathlib import Path
from typing import Any

MODEL_ARTIFACT = "model"
"""Where every run logs its best model in MLflow's PyTorch format: ``runs:/<run id>/model``."""
MODEL_CONFIG = "attn_config.yaml"
"""The training config inside a logged model's folder (MLflow ``extra_files``)."""
MODEL_DIGEST_TAG = "attn.model_digest"
"""The run tag holding :func:`folder_digest` of the model folder the run logged."""
MODEL_ID_TAG = "attn.model_id"
"""The run tag holding the id of the MLflow 3 logged model the run logged (``models:/<id>``)."""


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file below ``folder``: its relative path and its bytes, in path order."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def save_model(model: Any, config_yaml: str, folder: Path) -> Path:
    """Write ``model`` (a CPU copy, in eval mode) and ``config_yaml`` as an MLflow PyTorch model into
    ``folder / MODEL_ARTIFACT``; returns that folder."""
    import mlflow
    import mlflow.pytorch
    import torch

    config = Path(folder) / MODEL_CONFIG
    config.write_text(config_yaml)
    cpu_model = copy.deepcopy(model).cpu().eval()
    # MLflow warns on every pickled save, the format chosen on purpose (module docstring)
    flavour_log = logging.getLogger("mlflow.pytorch")
    level = flavour_log.level
    flavour_log.setLevel(logging.ERROR)
    target = Path(folder) / MODEL_ARTIFACT
    try:
        mlflow.pytorch.save_model(
            cpu_model, str(target), extra_files=[str(config)], serialization_format="pickle",
            # explicit: inferring them would load the model again in a subprocess
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
        )
    finally:
        flavour_log.setLevel(level)
    return target


def is_model_folder(folder: Path) -> bool:
    return (Path(folder) / "MLmodel").is_file()


def load_model_folder(folder: Path) -> tuple[dict, str]:
    """(state dict on the CPU, training config YAML) of a saved model folder; raises ValueError when
    the folder holds no attn config (a model attn did not log), any MLflow/pickle error as is."""
    import mlflow.pytorch

    config = next(iter(Path(folder).rglob(MODEL_CONFIG)), None)
    if config is None:
        raise ValueError(f"an MLflow model without {MODEL_CONFIG}; only models logged by attn can be rebuilt")
    model = mlflow.pytorch.load_model(str(folder), map_location="cpu")
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, config.read_text()
