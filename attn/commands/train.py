"""``python run.py EXPERIMENT.yaml [key=value ...] [--resume [RUN_NAME]]``: one training run through Ray
Train, or the experiment's sweep when it has a ``sweep:`` section; prints the ``done:`` line."""

from __future__ import annotations

import argparse

from attn.config import load_config
from attn.tracking import ui_link


def train(args: argparse.Namespace) -> int:
    resume = args.resume is not None
    common = dict(
        config_file=args.experiment, resume=resume, resume_name=args.resume or None,
        overrides=args.overrides if resume else None,
    )
    # The overrides take part in finding the run to resume (tracking.experiment_name and ray.storage_path
    # name its folder); the resumed run's config is its stored one with the overrides on top (the
    # lifecycle's job).
    cfg = load_config(args.experiment, args.overrides)
    if cfg.sweep is not None:
        from attn.distributed.sweep import run_sweep

        sweep = run_sweep(cfg, **common)
        print(f"MLflow UI: {ui_link(sweep.tracking_uri, sweep.parent_run_id)}")
        print(
            f"done: sweep {sweep.name}: {len(sweep.rows)} trials, summary {sweep.dir / 'trials.csv'}"
            + (f", best config {sweep.best_config}" if sweep.best_config else "")
            + f" | MLflow run {sweep.parent_run_id} in {sweep.tracking_uri}"
        )
        return 0
    from attn.distributed.driver import run_training

    result = run_training(cfg, **common)
    m = result.metrics
    print(f"MLflow UI: {ui_link(result.tracking_uri, result.mlflow_run_id)}")
    if "test_error" in m:
        print(
            f"done: {result.run_name} | test error {m['test_error']:.2f}% (mean policy), "
            f"{m.get('test_error_mc', float('nan')):.2f}% ({m.get('test_mc_samples', '?')} samples) | "
            f"MLflow run {result.mlflow_run_id} in {result.tracking_uri}"
        )
    return 0
