"""``python run.py prepare svhn|multinumber ...``: make a dataset folder that training then reads
(``data.data_dir``). Both are resumable: an interrupted command is run again to continue."""

from __future__ import annotations

import argparse
import sys


def prepare_svhn(args: argparse.Namespace) -> int:
    from attn.data.svhn import DEFAULT_URL
    from attn.data.svhn import prepare_svhn as prepare

    try:
        counts = prepare(args.to, base_url=args.url or DEFAULT_URL, extra=not args.no_extra, keep_archives=args.keep_archives)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue (downloads and builds resume)", file=sys.stderr)
        return 130
    print(
        f"done: SVHN in {args.to}: " + _counts(counts) + f"; train with data.task=svhn data.data_dir={args.to}"
        + (" data.use_extra=false" if args.no_extra else "")
    )
    return 0


def prepare_multinumber(args: argparse.Namespace) -> int:
    from attn.data.multinumber import INPAINT_RADIUS, INPAINT_SCALE, generate_multinumber

    radius = INPAINT_RADIUS if args.inpaint_radius is None else args.inpaint_radius
    scale = INPAINT_SCALE if args.inpaint_scale is None else args.inpaint_scale
    try:
        counts = generate_multinumber(
            args.svhn, args.to, size=args.size, box=args.box, count=args.count, split=args.split, seed=args.seed,
            workers=args.workers, test_pool=args.test_pool, inpaint_radius=radius,
            inpaint_scale=scale,
        )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue (finished images are kept)", file=sys.stderr)
        return 130
    print(f"done: multinumber in {args.to}: {_counts(counts)}; train with data.task=multinumber data.data_dir={args.to}")
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{split} {n} images" for split, n in counts.items())
