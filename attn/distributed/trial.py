"""Per-trial driver of a sweep: a Ray Tune function trainable that runs one configuration as a Ray
Train run (Train inside Tune, the pattern current Ray documents).

Tune calls :func:`run_trial` with the values Optuna proposed for the searched keys. It builds the
trial's config (the sweep's base config with those values), opens (or, for a restored trial,
reopens) the trial's MLflow run as a child of the sweep's run, and fits a ``TorchTrainer`` running the
same per-worker function as a single run. ``TuneReportCallback`` forwards every per-epoch report to
Tune, so ASHA sees one result per epoch. The Train run is named after the trial, so a restored trial
continues from its last checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from attn.config import set_key, validate_config
from attn.tracking import child_runs, reopen_run, start_run

TRIAL_TAG = "attn.trial_id"


def trial_config(base: dict[str, Any], params: dict[str, Any], run_name: str):
    """The config of one trial: ``base`` (a config dict without its sweep section) with ``params``
    ({dotted key: value}) set, validated."""
    raw = copy.deepcopy(base)
    raw.pop("sweep", None)
    for key, value in params.items():
        set_key(raw, key, value)
    set_key(raw, "tracking.run_name", run_name)
    return validate_config(raw, f"sweep trial {run_name} ({', '.join(f'{k}={v!r}' for k, v in params.items())})")


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def find_child_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str):
    """The MLflow run (a :class:`~attn.tracking.RunRecord`) of trial ``trial_id`` under the sweep's
    run, or None."""
    runs = child_runs(uri, experiment_id, parent_run_id, {TRIAL_TAG: trial_id})
    return runs[0] if runs else None


def run_trial(params: dict[str, Any], *, base: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Tune's function trainable. ``sweep``: name, dir, MLflow uri, experiment and parent run ids."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from attn.distributed.driver import make_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    run_name = f"{sweep['name']}-{trial_id}"
    cfg = trial_config(base, params, run_name)
    # What the trial tried, in its MLflow name: the runs list reads at a glance.
    mlflow_name = f"{trial_id} " + " ".join(f"{k.rsplit('.', 1)[-1]}={_value(v)}" for k, v in params.items())
    uri, exp_id, parent = sweep["uri"], sweep["experiment_id"], sweep["parent_run_id"]
    existing = find_child_run(uri, exp_id, parent, trial_id)
    if existing is not None:  # a restored trial continues in its own MLflow run
        run_id = existing.run_id
        reopen_run(uri, run_id)
    else:
        tags = {"mlflow.parentRunId": parent, TRIAL_TAG: trial_id, "attn.sweep": sweep["name"]}
        tags.update({f"attn.param.{k}": str(v) for k, v in params.items()})
        run_id = start_run(uri, exp_id, cfg, mlflow_name, extra_tags=tags)

    trainer = make_trainer(
        cfg, f"trial-{trial_id}", Path(sweep["dir"]) / "trials", uri, run_id, callbacks=[TuneReportCallback()],
        line_prefix=f"trial {trial_id} | ",
    )
    # The sweep driver closes the MLflow run when Tune reports how the trial ended (finished, stopped
    # by ASHA, failed): a stopped trial's actor is killed before it could say so itself.
    trainer.fit()
