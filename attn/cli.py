"""Command line of ``run.py``.

    python run.py EXPERIMENT.yaml [key=value ...] [--resume [RUN_NAME]]    train one configuration, or
                                                                          run its sweep: section
    python run.py prepare svhn --to DIR [--url BASE_URL] [--no-extra] [--keep-archives]
                                                                          download and prepare a dataset
    python run.py eval SOURCE [--split test|val] [--mc M] [key=value ...]  evaluate trained weights
    python run.py show RUN_ID [--to DIR]                                  fetch a run's pictures and summary
    python run.py curves RUN [RUN ...] --to FILE.png                      validation curves of runs on one plot
    python run.py init-experiment --data DIR --to FILE.yaml               start an experiment for your images

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
    if cfg.sweep is not None:
        from attn.distributed.sweep import run_sweep

        sweep = run_sweep(
            cfg,
            config_file=args.experiment,
            resume=args.resume is not None,
            resume_name=args.resume or None,
            overrides=args.overrides if args.resume is not None else None,
        )
        print(
            f"done: sweep {sweep.name}: {len(sweep.rows)} trials, summary {sweep.dir / 'trials.csv'}"
            + (f", best config {sweep.best_config}" if sweep.best_config else "")
            + f" | MLflow run {sweep.parent_run_id} in {sweep.tracking_uri}"
        )
        return 0
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
    if argv and argv[0] == "multinumber":
        return _prepare_multinumber(argv[1:])
    from attn.data.svhn import DEFAULT_URL
    from attn.data.tasks import PREPARE_DATASETS

    p = argparse.ArgumentParser(
        prog="run.py prepare",
        description=(
            "Download a dataset, verify and extract it, and build its training cache. svhn: format 1 "
            "(train/, test/, extra/ with PNGs and digitStruct.mat); then train with data.task=svhn "
            "data.data_dir=DIR. multinumber: see `run.py prepare multinumber --help`."
        ),
    )
    p.add_argument("dataset", choices=list(PREPARE_DATASETS), help="the dataset to prepare")
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


def _prepare_multinumber(argv: list[str]) -> int:
    from attn.data import multinumber as mn

    p = argparse.ArgumentParser(
        prog="run.py prepare multinumber",
        description=(
            "Make the SVHN multi-number dataset: pairs of 1-2 digit SVHN numbers on one canvas with an "
            "inpainted background, labels in reading order; seeded, parallel and resumable (run the same "
            "command again after an interruption). Then train with data.task=multinumber data.data_dir=OUT."
        ),
    )
    p.add_argument("--svhn", required=True, metavar="DIR", help="SVHN format 1 root (train/, test/, optional extra/)")
    p.add_argument("--to", required=True, metavar="OUT", help="output folder (created if missing)")
    p.add_argument("--size", type=int, default=224, help="canvas side in pixels (224)")
    p.add_argument("--box", type=int, default=64, help="side of each pasted number (64)")
    p.add_argument("--count", type=int, default=500_000, help="images in all splits (500000)")
    p.add_argument("--split", type=float, nargs=3, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"),
                   help="shares of the three splits, summing to 1 (0.8 0.1 0.1)")
    p.add_argument("--seed", type=int, default=0, help="base of the per-image seeds (0)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (one per CPU)")
    p.add_argument("--test-pool", choices=["test", "train"], default="test",
                   help="draw test pairs from SVHN test/ only (default) or from the training pool")
    p.add_argument("--inpaint-radius", type=int, default=mn.INPAINT_RADIUS, help="Telea radius in canvas pixels")
    p.add_argument("--inpaint-scale", type=int, default=mn.INPAINT_SCALE,
                   help="inpaint on the canvas shrunk by this factor (1 = full resolution, slow)")
    args = p.parse_args(argv)
    try:
        counts = mn.generate_multinumber(
            args.svhn, args.to, size=args.size, box=args.box, count=args.count, split=args.split, seed=args.seed,
            workers=args.workers, test_pool=args.test_pool, inpaint_radius=args.inpaint_radius,
            inpaint_scale=args.inpaint_scale,
        )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue (finished images are kept)", file=sys.stderr)
        return 130
    print(
        f"done: multinumber in {args.to}: " + ", ".join(f"{k} {v} images" for k, v in counts.items())
        + f"; train with data.task=multinumber data.data_dir={args.to}"
    )
    return 0


def _tracking_uri_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--tracking-uri", default=None,
        help=f"{what}: an MLflow server URL or a store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )


def _tracking_uri(args: argparse.Namespace, must_exist: bool) -> str:
    """The resolved --tracking-uri, checked: a server answers; with ``must_exist`` a sqlite store exists."""
    from pathlib import Path

    from attn.errors import TrackingError
    from attn.tracking import check_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else None
    if must_exist and db is not None and not Path(db).is_file():
        raise TrackingError(f"{db}: no MLflow store there; pass --tracking-uri (a server URL or sqlite:///path/mlflow.db)")
    check_reachable(uri)
    return uri


def _show(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="run.py show",
        description="Fetch a run's glimpse pictures, heat map, accuracy tables and summary from MLflow.",
    )
    p.add_argument("run_id", help="MLflow run id (printed by a run's `done:` line; in the MLflow UI)")
    p.add_argument("--to", metavar="DIR", default=None, help="folder to write into (./show-<run name>)")
    _tracking_uri_option(p, "where the run is")
    args = p.parse_args(argv)
    from pathlib import Path

    from attn.commands.show import show_run

    uri = _tracking_uri(args, must_exist=True)
    dest, text = show_run(uri, args.run_id, Path(args.to) if args.to else None)
    print(text, end="")
    print(f"done: {dest}")
    return 0


def _init_experiment(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="run.py init-experiment",
        description=(
            "Inspect a folder of your own images (classes, counts, image sizes, channels; or label files) and "
            "write a commented starting experiment for it. Layouts: DIR/<class>/<images> or "
            "DIR/{train,val,test}/<class>/<images> (data.task image_folder, RAM); DIR/labels.csv or labels.json "
            "with the images, or one per DIR/{train,val,test}/ (data.task image_sequences, DRAM)."
        ),
    )
    p.add_argument("--data", required=True, metavar="DIR", help="the image folder (written into the file as given)")
    p.add_argument("--to", required=True, metavar="FILE", help="experiment file to write, e.g. experiments/my_data.yaml")
    p.add_argument("--task", choices=["image_folder", "image_sequences"], default=None,
                   help="default: image_sequences if a label file is found, else image_folder")
    p.add_argument("--labels-file", default=None, metavar="NAME",
                   help="image_sequences: the label file's name (default labels.csv or labels.json)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    args = p.parse_args(argv)
    if args.labels_file and args.task == "image_folder":
        p.error("--labels-file applies to --task image_sequences only")

    from attn.data.own_images import write_experiment

    summary, path = write_experiment(
        args.data, args.to, task=args.task or ("image_sequences" if args.labels_file else None),
        labels_file=args.labels_file, force=args.force,
    )
    print("\n".join(summary.lines()))
    print(f"done: wrote {path}; train with: python run.py {path}")
    return 0


def _eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="run.py eval",
        description=(
            "Evaluate trained weights on a split (mean policy and M sampled episodes averaged) and record the "
            "evaluation as an MLflow run linked to its source. SOURCE: an MLflow run id, experiment:NAME (its "
            "newest finished run), an MLflow model URI (runs:/RUN_ID/model, models:/NAME/VERSION) or a checkpoint "
            "path (best_model.pt, a checkpoint folder, a run folder)."
        ),
    )
    p.add_argument("source", help="the weights: run id, experiment:NAME, model URI or checkpoint path")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the stored config (not of its architecture)")
    p.add_argument("--split", choices=["test", "val"], default="test", help="the split to score (test)")
    p.add_argument("--mc", type=int, default=None, metavar="M", help="sampled episodes averaged (eval.mc_samples)")
    _tracking_uri_option(p, "the store holding the source and receiving the evaluation run")
    p.add_argument("--experiment", default=None, help="MLflow experiment of the evaluation run (the source run's)")
    args = p.parse_args(argv)
    if args.mc is not None and args.mc < 1:
        p.error("--mc must be at least 1")

    from attn.commands.evaluate import run_eval

    uri = _tracking_uri(args, must_exist=False)
    result = run_eval(
        args.source, tracking_uri=uri, split=args.split, mc_samples=args.mc, overrides=args.overrides,
        experiment=args.experiment,
    )
    m = result.metrics
    print(
        f"done: {args.split} error {m[f'{args.split}_error']:.2f}% (mean policy), {m[f'{args.split}_error_mc']:.2f}% "
        f"({int(m[f'{args.split}_mc_samples'])} samples) | MLflow run {result.run_id} in {result.tracking_uri}"
    )
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _curves(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="run.py curves",
        description="Draw the validation curves of finished or running runs on one pair of axes (by epoch, by wall time).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="MLflow run ids or run names")
    p.add_argument("--to", required=True, metavar="FILE.png", help="the picture to write")
    p.add_argument("--label", action="append", default=None, metavar="TEXT",
                   help="a legend label per run, in order (default: the run names)")
    p.add_argument("--title", default="", help="the picture's title")
    p.add_argument("--target", type=float, default=None, metavar="ERROR",
                   help="also print when each run's validation error first reached this value (%%)")
    _tracking_uri_option(p, "where the runs are")
    args = p.parse_args(argv)
    from pathlib import Path

    from attn.errors import ConfigError
    from attn.tracking import run_history
    from attn.viz import curve_points, learning_curves

    if args.label is not None and len(args.label) != len(args.runs):
        raise ConfigError(f"--label given {len(args.label)} times for {len(args.runs)} runs; give one per run or none")
    uri = _tracking_uri(args, must_exist=True)
    series = {}
    for i, ref in enumerate(args.runs):
        name, rows = run_history(uri, ref)
        series[args.label[i] if args.label else name] = rows
    path = learning_curves(series, Path(args.to), title=args.title)
    for label, rows in series.items():
        epochs, minutes, values = curve_points(rows)
        line = f"{label}: {len(epochs)} epochs, best val_error {min(values):.2f}%" if values else f"{label}: no epochs"
        if args.target is not None and values:
            hit = next((i for i, v in enumerate(values) if v <= args.target), None)
            line += (f"; <= {args.target:g}% first at epoch {epochs[hit]}, {minutes[hit]:.1f} min of training"
                     if hit is not None else f"; never <= {args.target:g}%")
        print(line)
    print(f"done: {path}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM (a scheduler, `kill`) stops a run like Ctrl-C: cleanly, its checkpoint kept.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if argv and argv[0] == "prepare":
            return _prepare(argv[1:])
        if argv and argv[0] == "show":
            return _show(argv[1:])
        if argv and argv[0] == "curves":
            return _curves(argv[1:])
        if argv and argv[0] == "eval":
            return _eval(argv[1:])
        if argv and argv[0] == "init-experiment":
            return _init_experiment(argv[1:])
        if argv and argv[0] == "train":
            argv = argv[1:]
        return _train(argv)
    except AttnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the environment, not the input: a full disk, a read-only or vanished folder
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
