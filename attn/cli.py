"""Command line of ``run.py``.

    python run.py EXPERIMENT.yaml [key=value ...] [--resume [RUN_NAME]]    train one configuration
    python run.py prepare svhn --to DIR [--url BASE_URL] [--no-extra] [--keep-archives]
                                                                          download and prepare a dataset

Errors caused by input (bad config, missing data, unreadable checkpoint, unreachable tracking store)
print one line ``error: ...`` and exit non-zero (2 for configuration errors), without a traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Optional

from attn.errors import AttnError


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="run.py",
        description="Train an attention model from an experiment file through Ray Train, tracked in MLflow.",
    )
    p.add_argument("experiment", help="experiment YAML file, e.g. experiments/mnist_ram.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-3 ray.num_workers=2")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="RUN_NAME",
        help="continue the newest (or the named) run of this experiment from its last checkpoint",
    )
    args = p.parse_args(argv)
    if args.resume and "=" in args.resume:
        # `--resume key=value`: argparse took the first override as the run name (names never hold '=').
        args.overrides.insert(0, args.resume)
        args.resume = ""

    from attn.config import load_config

    cfg = load_config(args.experiment, args.overrides if args.resume is None else [])
    from attn.distributed.driver import run_training

    result = run_training(
        cfg,
        config_file=args.experiment,
        resume=args.resume is not None,
        resume_name=args.resume or None,
        overrides=args.overrides if args.resume is not None else None,
    )
    m = result.metrics
    if "test_error" in m:
        print(
            f"done: {result.run_name} | test error {m['test_error']:.2f}% (mean policy), "
            f"{m.get('test_error_mc', float('nan')):.2f}% ({m.get('test_mc_samples', '?')} samples) | "
            f"MLflow run {result.mlflow_run_id} in {result.tracking_uri}"
        )
    return 0


def _prepare(argv: list[str]) -> int:
    from attn.data.svhn import DEFAULT_URL

    p = argparse.ArgumentParser(
        prog="run.py prepare",
        description=(
            "Download a dataset, verify and extract it, and build its training cache. svhn: format 1 "
            "(train/, test/, extra/ with PNGs and digitStruct.mat); then train with data.task=svhn "
            "data.data_dir=DIR."
        ),
    )
    p.add_argument("dataset", choices=["svhn"], help="the dataset to prepare")
    p.add_argument("--to", required=True, metavar="DIR", help="folder to fill (created if missing)")
    p.add_argument("--url", default=DEFAULT_URL, metavar="BASE_URL", help=f"where the archives are ({DEFAULT_URL})")
    p.add_argument("--no-extra", action="store_true", help="skip extra/ (1.3 GB; train with data.use_extra=false)")
    p.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files after extracting them")
    args = p.parse_args(argv)

    from attn.data.svhn import prepare_svhn

    try:
        counts = prepare_svhn(args.to, base_url=args.url, extra=not args.no_extra, keep_archives=args.keep_archives)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue (downloads and builds resume)", file=sys.stderr)
        return 130
    print(
        f"done: SVHN in {args.to}: "
        + ", ".join(f"{k} {v} images" for k, v in counts.items())
        + f"; train with data.task=svhn data.data_dir={args.to}"
        + (" data.use_extra=false" if args.no_extra else "")
    )
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM (a scheduler, `kill`) stops a run like Ctrl-C: cleanly, its checkpoint kept.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if argv and argv[0] == "prepare":
            return _prepare(argv[1:])
        if argv and argv[0] == "train":
            argv = argv[1:]
        return _train(argv)
    except AttnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
