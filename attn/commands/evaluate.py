"""``python run.py eval SOURCE``: evaluate trained weights and record the evaluation in MLflow.

The model is rebuilt from the config stored with the weights (see :mod:`attn.sources`), with
``key=value`` overrides for anything but its architecture (e.g. ``data.data_dir`` on another machine,
``eval.batch_size``, ``eval.seed``). It is scored on one split by the mean policy and by M sampled
episodes averaged (``--mc M``, default the config's ``eval.mc_samples``), exactly as a training run
scores its test split: with the same config and seed, the mean-policy error is the one the training
run logged. The evaluation is an MLflow run of its own (tag ``attn.kind = eval``), in the source
run's experiment when the weights came from MLflow, linked to it by tags and its description, with
the metrics, the glimpse pictures and the accuracy tables.

Runs in this process, without Ray: an evaluation is one pass over a split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from attn.config import ExperimentConfig, apply_overrides, dump_config, load_yaml, validate_config
from attn.data import BatchLoader, build_data
from attn.engine.checkpoint import architecture_differences
from attn.engine.objective import objective_for
from attn.engine.passes import score_split
from attn.engine.pictures import Pictures
from attn.engine.split_stats import SplitStats
from attn.errors import CheckpointError, ConfigError
from attn.models import build_model
from attn.sources import load_source


@dataclass
class EvalResult:
    metrics: dict[str, float]
    run_id: str
    tracking_uri: str
    source_run_id: Optional[str]


def build_config(config_yaml: str, overrides: list[str], label: str) -> ExperimentConfig:
    raw = load_yaml(config_yaml) or {}
    raw.pop("sweep", None)
    cfg = validate_config(apply_overrides(raw, overrides), f"the config of {label}")
    differ = architecture_differences(config_yaml, dump_config(cfg))
    if differ:
        raise ConfigError(
            f"overrides change the architecture the weights were trained with: {'; '.join(differ[:6])}; "
            "only data (besides data.task), eval and tracking keys can change for an evaluation"
        )
    return cfg


def run_eval(
    source: str,
    *,
    tracking_uri: str,
    split: str = "test",
    mc_samples: Optional[int] = None,
    overrides: Optional[list[str]] = None,
    experiment: Optional[str] = None,
    log=print,
) -> EvalResult:
    from attn.distributed.lifecycle import absolute_data_paths, tracked
    from attn.tracking import ensure_experiment, get_run, start_run

    weights = load_source(source, tracking_uri)
    cfg = build_config(weights.config_yaml, list(overrides or []), weights.label)
    if mc_samples is not None:
        cfg.eval.mc_samples = mc_samples
    absolute_data_paths(cfg)
    torch.manual_seed(cfg.train.seed)
    data = build_data(cfg.data)
    model = build_model(cfg.model, data.spec, (data.mean, data.std))
    try:
        model.load_state_dict(weights.state)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights.label}: weights do not fit the model of their config ({str(exc).splitlines()[0][:200]})") from None
    chosen = data.test if split == "test" else data.val
    if len(chosen) == 0:
        raise ConfigError(f"--split {split}: that split of {cfg.data.task} is empty (data.val_fraction = 0?)")
    if experiment:
        exp_id = ensure_experiment(tracking_uri, experiment)
    elif weights.experiment_id is not None and weights.run_id is not None:
        exp_id = weights.experiment_id
    else:
        exp_id = ensure_experiment(tracking_uri, cfg.tracking.experiment_name or "evaluations")
    source_name = weights.label
    tags = {"attn.kind": "eval", "attn.source": source, "attn.eval_split": split}
    if weights.run_id:
        source_name = get_run(tracking_uri, weights.run_id).name
        tags["attn.source_run_id"] = weights.run_id
    link = (
        f"[{source_name}](#/experiments/{weights.experiment_id}/runs/{weights.run_id})"
        if weights.run_id and weights.experiment_id else f"`{source}`"
    )
    with tracked(tracking_uri) as run:
        run.run_id = start_run(tracking_uri, exp_id, cfg, f"eval-{source_name}-{split}", extra_tags=tags)
        metrics, summary = _score_and_record(cfg, model, data, chosen, split, run.run_id, tracking_uri, link, source, log)
        run.status = "FINISHED"
    log(f"{weights.label}: {summary}")
    return EvalResult(metrics, run.run_id, tracking_uri, weights.run_id)


def _score_and_record(cfg, model, data, chosen, split: str, run_id: str, uri: str, link: str, source: str, log):
    """Score ``chosen`` (a split of ``data``) and write metrics, pictures, tables and the description
    into MLflow run ``run_id``; returns (metrics, one-line summary)."""
    from attn.tracking import MlflowTracker

    device = torch.device("cpu")
    loader = BatchLoader(chosen, cfg.eval.batch_size, shuffle=False)
    tracker = MlflowTracker(uri, run_id, retry_timeout_s=cfg.tracking.retry_timeout_s, log=log)
    t0 = time.perf_counter()
    stats = SplitStats(data.spec, device)
    m = cfg.eval.mc_samples
    metrics = score_split(model, loader, data, device=device, prefix=split, mc_samples=m, seed=cfg.eval.seed,
                          stats=stats)
    metrics["eval_time_s"] = time.perf_counter() - t0
    tracker.log_metrics(metrics, step=0)
    pictures = Pictures(cfg, data, device, split=split)
    pictures.episodes(model, "final", tracker)
    pictures.analysis(stats, tracker, step=0, prefix=split)
    what = objective_for(data.spec).error_name
    summary = (
        f"{split} {what} {metrics[f'{split}_error']:.2f}% (mean policy), "
        f"{metrics[f'{split}_error_mc']:.2f}% ({m} samples averaged)"
    )
    tracker.set_tag("result.summary", summary)
    tracker.set_tag(
        "mlflow.note.content",
        f"Evaluation of {link} on the {split} split ({int(metrics[f'{split}_images'])} images), weights from `{source}`.",
    )
    tracker.close()
    return metrics, summary


def evaluate(args) -> int:
    """The ``run.py eval`` command: score, record, print the ``done:`` line."""
    from attn.commands.store import checked_store

    uri = checked_store(args.tracking_uri, must_exist=False)
    result = run_eval(
        args.source, tracking_uri=uri, split=args.split, mc_samples=args.mc, overrides=args.overrides,
        experiment=args.experiment,
    )
    m, s = result.metrics, args.split
    print(
        f"done: {s} error {m[f'{s}_error']:.2f}% (mean policy), {m[f'{s}_error_mc']:.2f}% "
        f"({int(m[f'{s}_mc_samples'])} samples) | MLflow run {result.run_id} in {result.tracking_uri}"
    )
    return 0
