"""Benchmarks, each printing a table and then JSON (one line per row):

- ``python -m attn.bench ram [--batch 128] [--steps 200] [key=value ...]``: full training steps
  (forward episode, hybrid loss, backward, optimizer step) of RAM on random MNIST-shaped input in
  this process with the default thread count: images/s (median over repeats) and peak memory.
- ``python -m attn.bench cores [--glimpses 6 12 24] [key=value ...]``: every core, with and without
  its key/value cache (Transformer cores), at T glimpses: training images/s, the forward time of one
  episode batch, and the layer passes per episode (token positions each layer processed), which grow
  linearly in T with the cache and quadratically without it.
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


SPEC = DataSpec(1, 28, 28, 10, tuple(str(i) for i in range(10)))


def _training_rate(model, cfg, batch: int, steps: int, repeats: int) -> list[float]:
    """Images/s of full training steps, one value per repeat (after a warm-up)."""
    optimizer = build_optimizer(model, cfg.train)
    images = torch.randn(batch, 1, 28, 28)
    labels = torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        terms = hybrid_loss(model(images), labels, cfg.train.rl_coef)
        terms.total.backward()
        optimizer.step()

    for _ in range(max(steps // 10, 3)):
        step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps * batch / (time.perf_counter() - start))
    return rates


def bench_ram(batch: int, steps: int, repeats: int, overrides: list[str]) -> dict:
    cfg = load_config(None, overrides)
    configure_torch()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, SPEC)
    rates = _training_rate(model, cfg, batch, steps, repeats)
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


def _count_layer_positions(model) -> list[int]:
    """A counter of token positions processed by every Transformer layer (one layer pass of one
    position = 1); recurrent cores count one pass per step."""
    from attn.models.cores.attention import RelativeLayer

    counter = [0]
    for mod in model.modules():
        if isinstance(mod, RelativeLayer):
            block = mod.block

            def counted(x, attend, _block=block):
                counter[0] += x.shape[1] if x.dim() == 3 else 1
                return _block(x, attend)

            mod.block = counted
        elif type(mod).__name__ == "GPT2Block":

            def pre_hook(_m, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                counter[0] += h.shape[1]

            mod.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return counter


def bench_cores(batch: int, steps: int, repeats: int, glimpses: list[int], overrides: list[str]) -> list[dict]:
    configure_torch()
    rows = []
    for kind in ("rnn", "lstm", "gpt2", "trxl", "gtrxl"):
        for cache in (True, False) if kind in ("gpt2", "trxl", "gtrxl") else (True,):
            for T in glimpses:
                extra = [f"model.core.kind={kind}", f"model.num_glimpses={T}"]
                if not cache:
                    extra.append("model.core.use_cache=false")
                cfg = load_config(None, extra + overrides)
                torch.manual_seed(cfg.train.seed)
                model = build_model(cfg.model, SPEC)
                counter = _count_layer_positions(model)
                images = torch.randn(batch, 1, 28, 28)
                with torch.no_grad():
                    model(images)
                    counter[0] = 0
                    start = time.perf_counter()
                    model(images)
                    episode_ms = 1000.0 * (time.perf_counter() - start)
                passes = counter[0] if kind in ("gpt2", "trxl", "gtrxl") else T
                layers = cfg.model.core.num_layers if kind in ("gpt2", "trxl", "gtrxl") else 1
                rates = _training_rate(model, cfg, batch, steps, repeats)
                rows.append(
                    {
                        "name": "cores",
                        "core": kind,
                        "cache": cache if kind in ("gpt2", "trxl", "gtrxl") else "-",
                        "glimpses": T,
                        "images_per_s": round(statistics.median(rates), 1),
                        "episode_ms": round(episode_ms, 2),
                        "layer_passes": passes // layers,
                        "batch": batch,
                        "hidden": cfg.model.hidden_size,
                        "layers": layers,
                        "threads": torch.get_num_threads(),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _print_table(rows: list[dict], keys: list[str]) -> None:
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attn.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("which", choices=["ram", "cores"], help="what to benchmark")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="training steps per repeat (ram 200, cores 10)")
    p.add_argument("--glimpses", type=int, nargs="+", default=[6, 12, 24], help="cores: values of T")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.num_glimpses=8")
    args = p.parse_intermixed_args(argv)
    try:
        if args.which == "ram":
            rows = [bench_ram(args.batch, args.steps or 200, args.repeats, args.overrides)]
            keys = ["name", "core", "glimpses", "batch", "images_per_s", "ms_per_step", "peak_mem_mb", "threads"]
        else:
            rows = bench_cores(args.batch, args.steps or 10, args.repeats, args.glimpses, args.overrides)
            keys = ["core", "cache", "glimpses", "images_per_s", "episode_ms", "layer_passes", "layers", "batch"]
    except AttnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    _print_table(rows, keys)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
