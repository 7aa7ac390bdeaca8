"""Command line of ``run.py`` and of the ``attn`` console script: the argument parsers, and the one
place that turns errors into one line. What each command does lives in :mod:`attn.commands`.

    python run.py [train] EXPERIMENT.yaml [key=value ...] [--resume [RUN_NAME]]
    python run.py eval SOURCE [--split test|val] [--mc M] [key=value ...]
    python run.py show RUN_ID [--to DIR]
    python run.py curves RUN [RUN ...] --to FILE.png
    python run.py prepare svhn --to DIR | prepare multinumber --svhn DIR --to OUT
    python run.py init-experiment --data DIR --to FILE.yaml
    python run.py config EXPERIMENT.yaml | config --keys | config --schema

Errors caused by input (bad config, missing data, unreadable checkpoint, unreachable tracking store)
print one line ``error: ...`` and exit non-zero (2 for configuration errors), without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from pathlib import Path
from typing import Optional

from attn.errors import AttnError

COMMANDS = {
    "train": ("attn.commands.train:train", "train one configuration through Ray Train, or run its sweep: section"),
    "eval": ("attn.commands.evaluate:evaluate", "score trained weights on a split and record it in MLflow"),
    "show": ("attn.commands.show:show", "fetch a run's glimpse pictures, tables and summary from MLflow"),
    "curves": ("attn.commands.curves:curves", "draw runs' validation curves on one picture"),
    "prepare": (None, "download or make a dataset folder (svhn, multinumber)"),
    "init-experiment": ("attn.commands.init_experiment:init_experiment",
                        "write a starting experiment for a folder of your own images"),
    "config": ("attn.commands.config:config", "print a resolved experiment, every key (--keys) or the JSON Schema"),
}
"""Command -> ("module:function" that runs it, its line in ``-h``)."""

PREPARE = {
    "svhn": ("attn.commands.prepare:prepare_svhn", "SVHN format 1: download, verify, extract, build the cache"),
    "multinumber": ("attn.commands.prepare:prepare_multinumber",
                    "the SVHN multi-number set: two numbers per canvas, made from SVHN format 1"),
}
"""The datasets of ``prepare`` (the task registry's ``prepare`` names; a test holds them equal)."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"attn {version('attn')}"
    except PackageNotFoundError:
        return "attn (not installed: run from a source folder)"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _command(sub, name: str, description: str, **kw) -> argparse.ArgumentParser:
    handler, summary = COMMANDS[name]
    p = sub.add_parser(name, help=summary, description=description, **kw)
    p.set_defaults(handler=handler)
    return p


def _tracking_uri_option(p: argparse.ArgumentParser, what: str, per_run: bool = False) -> None:
    """``per_run``: the option may be given once per run (a list, or None when not given)."""
    p.add_argument(
        "--tracking-uri", default=None, action="append" if per_run else "store",
        help=f"{what}: an MLflow server URL or a store{', once for all runs or once per run in order' if per_run else ''} "
             "(default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )


def _overrides(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help=what)


def _train_parser(sub) -> None:
    p = _command(sub, "train", "Train an attention model from an experiment file through Ray Train, tracked in "
                 "MLflow; an experiment with a sweep: section runs the sweep. `train` may be left out.")
    p.add_argument("experiment", help="experiment YAML file, e.g. experiments/mnist_ram.yaml")
    _overrides(p, "dotted overrides, e.g. train.lr=1e-3 ray.num_workers=2 (keys: run.py config --keys)")
    p.add_argument(
        "--resume", nargs="?", const="", default=None, metavar="RUN_NAME",
        help="continue the newest (or the named) run of this experiment from its last checkpoint",
    )


def _eval_parser(sub) -> None:
    p = _command(sub, "eval", (
        "Evaluate trained weights on a split (mean policy and M sampled episodes averaged) and record the "
        "evaluation as an MLflow run linked to its source. SOURCE: an MLflow run id, experiment:NAME (its "
        "newest finished run), an MLflow model URI (runs:/RUN_ID/model, models:/NAME/VERSION) or a checkpoint "
        "path (best_model.pt, a checkpoint folder, a run folder)."))
    p.add_argument("source", help="the weights: run id, experiment:NAME, model URI or checkpoint path")
    _overrides(p, "overrides of the stored config (not of its architecture)")
    p.add_argument("--split", choices=["test", "val"], default="test", help="the split to score (test)")
    p.add_argument("--mc", type=_positive, default=None, metavar="M", help="sampled episodes averaged (eval.mc_samples)")
    _tracking_uri_option(p, "the store holding the source and receiving the evaluation run")
    p.add_argument("--experiment", default=None, help="MLflow experiment of the evaluation run (the source run's)")


def _show_parser(sub) -> None:
    p = _command(sub, "show", "Fetch a run's glimpse pictures, heat map, accuracy tables and summary from MLflow.")
    p.add_argument("run_id", help="MLflow run id (printed by a run's `done:` line; in the MLflow UI)")
    p.add_argument("--to", metavar="DIR", default=None, help="folder to write into (./show-<run name>)")
    _tracking_uri_option(p, "where the run is")


def _curves_parser(sub) -> None:
    p = _command(sub, "curves", "Draw the validation curves of finished or running runs on one pair of axes "
                 "(by epoch, by wall time).")
    p.add_argument("runs", nargs="+", metavar="RUN", help="MLflow run ids or run names")
    p.add_argument("--to", required=True, metavar="FILE.png", help="the picture to write")
    p.add_argument("--label", action="append", default=None, metavar="TEXT",
                   help="a legend label per run, in order (default: the run names)")
    p.add_argument("--title", default="", help="the picture's title")
    p.add_argument("--target", type=float, default=None, metavar="ERROR",
                   help="also print when each run's validation error first reached this value (%%)")
    _tracking_uri_option(p, "where the runs are", per_run=True)


def _prepare_parser(sub) -> None:
    p = _command(sub, "prepare", "Download or make a dataset folder and build its training cache; run the same "
                 "command again to continue an interrupted one.")
    datasets = p.add_subparsers(dest="dataset", metavar="DATASET", title="datasets", required=True)
    svhn = datasets.add_parser("svhn", help=PREPARE["svhn"][1], description=(
        "Download SVHN format 1 (train/, test/, extra/ with PNGs and digitStruct.mat), verify and extract it, "
        "and build its training cache; then train with data.task=svhn data.data_dir=DIR."))
    svhn.set_defaults(handler=PREPARE["svhn"][0])
    # Defaults that live in the data modules are filled in by the command: importing them here would
    # load torch for every `run.py -h`.
    svhn.add_argument("--to", required=True, metavar="DIR", help="folder to fill (created if missing)")
    svhn.add_argument("--url", default=None, metavar="BASE_URL", help="where the archives are (default: the SVHN site, ufldl.stanford.edu)")
    svhn.add_argument("--no-extra", action="store_true", help="skip extra/ (1.3 GB; train with data.use_extra=false)")
    svhn.add_argument("--keep-archives", action="store_true", help="keep the .tar.gz files after extracting them")
    _multinumber_parser(datasets)


def _multinumber_parser(datasets) -> None:
    p = datasets.add_parser("multinumber", help=PREPARE["multinumber"][1], description=(
        "Make the SVHN multi-number dataset: pairs of 1-2 digit SVHN numbers on one canvas with an inpainted "
        "background, labels in reading order; seeded, parallel and resumable. Then train with "
        "data.task=multinumber data.data_dir=OUT."))
    p.set_defaults(handler=PREPARE["multinumber"][0])
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
    p.add_argument("--inpaint-radius", type=int, default=None, help="Telea radius in canvas pixels (default 32)")
    p.add_argument("--inpaint-scale", type=int, default=None,
                   help="inpaint on the canvas shrunk by this factor (1 = full resolution, slow; default 4)")


def _init_experiment_parser(sub) -> None:
    p = _command(sub, "init-experiment", (
        "Inspect a folder of your own images (classes, counts, image sizes, channels; or label files) and "
        "write a commented starting experiment for it. Layouts: DIR/<class>/<images> or "
        "DIR/{train,val,test}/<class>/<images> (data.task image_folder, RAM); DIR/labels.csv or labels.json "
        "with the images, or one per DIR/{train,val,test}/ (data.task image_sequences, DRAM)."))
    p.add_argument("--data", required=True, metavar="DIR", help="the image folder (written into the file as given)")
    p.add_argument("--to", required=True, metavar="FILE", help="experiment file to write, e.g. experiments/my_data.yaml")
    p.add_argument("--task", choices=["image_folder", "image_sequences"], default=None,
                   help="default: image_sequences if a label file is found, else image_folder")
    p.add_argument("--labels-file", default=None, metavar="NAME",
                   help="image_sequences: the label file's name (default labels.csv or labels.json)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def _config_parser(sub) -> None:
    p = _command(sub, "config", (
        "Print what an experiment file resolves to (every key, defaults filled in, base: files and overrides "
        "applied), every configuration key with its default and description (--keys; with an experiment, "
        "its keys and values), or the JSON Schema of experiment files for editors (--schema)."))
    p.add_argument("experiment", nargs="?", default=None, help="experiment YAML file")
    _overrides(p, "dotted overrides, as for train")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--keys", action="store_true", help="list the keys with defaults (or values) and descriptions")
    what.add_argument("--schema", action="store_true", help="print the JSON Schema of experiment files")


def parser(prog: str = "run.py") -> argparse.ArgumentParser:
    """The whole command line: one subcommand per entry of :data:`COMMANDS`."""
    top = argparse.ArgumentParser(
        prog=prog,
        description="attn: train and compare fixation-guided visual attention models (RAM, DRAM) with\n"
        "recurrent or Transformer cores, on Ray, tracked in MLflow.",
        epilog=f"Examples:\n  {prog} experiments/mnist_ram.yaml train.epochs=20\n  {prog} config --keys\n"
        f"  {prog} COMMAND -h    (the options of one command)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=_version())
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for build in (_train_parser, _eval_parser, _show_parser, _curves_parser, _prepare_parser,
                  _init_experiment_parser, _config_parser):
        build(sub)
    return top


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _run(handler: str, args: argparse.Namespace) -> int:
    module, function = handler.split(":")
    return getattr(importlib.import_module(module), function)(args)


def _parse(top: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parse_args``, except that overrides may also follow an option: in ``EXP --resume a=1 b=2``
    argparse hands ``a=1`` to --resume and, its positionals already read, leaves ``b=2`` over; both
    join the overrides (run names never hold '=')."""
    args, rest = top.parse_known_args(argv)
    if getattr(args, "resume", None) and "=" in args.resume:
        args.overrides.insert(0, args.resume)
        args.resume = ""
    if rest and hasattr(args, "overrides") and all("=" in r and not r.startswith("-") for r in rest):
        args.overrides.extend(rest)
    elif rest:
        top.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM (a scheduler, `kill`) stops a run like Ctrl-C: cleanly, its checkpoint kept.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    prog = "attn" if Path(sys.argv[0]).name == "attn" else "run.py"
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "train")  # `run.py EXPERIMENT.yaml ...` is the everyday command
    try:
        args = _parse(parser(prog), argv)
        if args.command is None:
            parser(prog).print_help()
            return 2
        return _run(args.handler, args)
    except AttnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `run.py config --keys | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the environment, not the input: a full disk, a read-only or vanished folder
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
