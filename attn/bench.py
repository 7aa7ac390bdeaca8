"""Benchmarks: ``python -m attn.bench ram [--batch 128] [--steps 200] [key=value ...]``.

``ram`` measures full training steps (forward episode, hybrid loss, backward, optimizer step) of the
RAM model on random MNIST-shaped input in this process with the default thread count, and reports
images/s (median over repeats) and peak resident memory. It prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch

from attn.config import load_config
from attn.data.base import DataSpec
from attn.engine.optim import build_optimizer
from attn.errors import AttnError
from attn.losses import hybrid_loss
from attn.models import build_model
from attn.runtime import configure_torch


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_ram(batch: int, steps: int, repeats: int, overrides: list[str]) -> dict:
    cfg = load_config(None, overrides)
    configure_torch()
    torch.manual_seed(cfg.train.seed)
    spec = DataSpec(1, 28, 28, 10, tuple(str(i) for i in range(10)))
    model = build_model(cfg.model, spec)
    optimizer = build_optimizer(model, cfg.train)
    images = torch.randn(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        terms = hybrid_loss(model(images), labels, cfg.train.rl_coef)
        terms.total.backward()
        optimizer.step()

    for _ in range(max(steps // 10, 5)):
        step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * batch / (time.perf_counter() - start))
    ips = statistics.median(rates)
    m = cfg.model
    return {
        "name": "ram",
        "images_per_s": round(ips, 1),
        "ms_per_step": round(1000.0 * batch / ips, 3),
        "peak_mem_mb": round(_peak_rss_mb(), 1),
        "batch": batch,
        "steps": steps,
        "repeats": repeats,
        "rates": [round(r, 1) for r in rates],
        "glimpses": m.num_glimpses,
        "patch": m.retina.patch_size,
        "scales": m.retina.num_scales,
        "hidden": m.hidden_size,
        "core": m.core.kind,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def _print_table(rows: list[dict], keys: list[str]) -> None:
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attn.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("which", choices=["ram"], help="what to benchmark")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=200, help="training steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.num_glimpses=8")
    args = p.parse_intermixed_args(argv)
    try:
        row = bench_ram(args.batch, args.steps, args.repeats, args.overrides)
    except AttnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    _print_table([row], ["name", "core", "glimpses", "batch", "images_per_s", "ms_per_step", "peak_mem_mb", "threads"])
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
