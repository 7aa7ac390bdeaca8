"""``python run.py curves RUN [RUN ...] --to FILE.png``: the validation curves of runs on one pair of
axes (by epoch and by minutes of training), and when each first reached ``--target``."""

from __future__ import annotations

import argparse
from pathlib import Path

from attn.commands.store import checked_store
from attn.errors import ConfigError
from attn.tracking import run_history
from attn.viz import curve_points, learning_curves


def curves(args: argparse.Namespace) -> int:
    if args.label is not None and len(args.label) != len(args.runs):
        raise ConfigError(f"--label given {len(args.label)} times for {len(args.runs)} runs; give one per run or none")
    stores = args.tracking_uri or [None]
    if len(stores) not in (1, len(args.runs)):
        raise ConfigError(f"--tracking-uri given {len(stores)} times for {len(args.runs)} runs; give it once for "
                          "all runs or once per run")
    checked = {uri: checked_store(uri, must_exist=True) for uri in stores}
    per_run = stores if len(stores) == len(args.runs) else stores * len(args.runs)
    series = {}
    for i, (ref, uri) in enumerate(zip(args.runs, per_run)):
        name, rows = run_history(checked[uri], ref)
        series[args.label[i] if args.label else name] = rows
    path = learning_curves(series, Path(args.to), title=args.title)
    for label, rows in series.items():
        print(_summary(label, rows, args.target))
    print(f"done: {path}")
    return 0


def _summary(label: str, rows, target) -> str:
    epochs, minutes, values = curve_points(rows)
    if not values:
        return f"{label}: no epochs"
    line = f"{label}: {len(epochs)} epochs, best val_error {min(values):.2f}%"
    if target is not None:
        hit = next((i for i, v in enumerate(values) if v <= target), None)
        line += (f"; <= {target:g}% first at epoch {epochs[hit]}, {minutes[hit]:.1f} min of training"
                 if hit is not None else f"; never <= {target:g}%")
    return line
