"""``python run.py init-experiment --data DIR --to FILE.yaml``: inspect a folder of your own images and
write a commented starting experiment for it (:func:`attn.data.own_images.write_experiment`)."""

from __future__ import annotations

import argparse

from attn.errors import ConfigError


def init_experiment(args: argparse.Namespace) -> int:
    if args.labels_file and args.task == "image_folder":
        raise ConfigError("--labels-file applies to --task image_sequences only (image_folder reads class folders)")
    from attn.data.own_images import write_experiment

    summary, path = write_experiment(
        args.data, args.to, task=args.task or ("image_sequences" if args.labels_file else None),
        labels_file=args.labels_file, force=args.force,
    )
    print("\n".join(summary.lines()))
    print(f"done: wrote {path}; train with: python run.py {path}")
    return 0
