"""Benchmarks, each printing a table and then JSON (one line per row):

- ``python -m attn.bench ram [--batch 128] [--steps 200] [--image 28] [--versus-loop] [--versus-eager]
  [key=value ...]``: full training steps (forward episode, hybrid loss, backward, optimizer step) of RAM
  on random gray input (28x28 as MNIST; ``--image 100`` as the cluttered 100x100 canvases) in this
  process with the default thread count: images/s (median over repeats) and peak memory;
  ``--versus-loop`` adds the generic autograd loop, ``--versus-eager`` the uncompiled step (with
  ``train.compile`` set), each measured in alternation with it. Like every bench of training steps
  it takes ``train.compile=default`` (or ``reduce-overhead``) and ``train.precision=bf16`` among the
  overrides.
- ``python -m attn.bench dram [--batch 64] [--steps 20] [key=value ...]``: full training steps of DRAM
  (context net, two stacked cores, conv glimpse net, sequence hybrid loss) on random 54x54 gray input
  with labels of 1-3 digits plus the end token (4 label slots), 3 glimpses per digit (12 glimpses per
  episode); model defaults in ``DRAM_BASE`` (LSTM, d = 512, 2 scales of 12x12), any key overridable.
- ``python -m attn.bench cores [--glimpses 6 12 24] [key=value ...]``: every core at T glimpses, the
  Transformer cores in three rollouts (two-phase, cached steps inside the graph, prefix re-run):
  training images/s and its ratio to the prefix re-run, the forward time of one training episode
  batch, and the layer passes per episode (token positions each layer processed), which grow
  linearly in T with the cache and quadratically without it.
- ``python -m attn.bench background [--batch 128] [--canvas 110 186 224]``: the extended-background
  generator of ``svhn_background`` (:class:`attn.data.background.Canvas`) on 64x64 gray crops: images/s
  of training canvases (random, one batched draw) and of evaluation canvases (seeded per image).
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
from attn.data.base import IGNORE_INDEX, DataSpec
from attn.engine.compile import compile_training
from attn.engine.optim import build_optimizer
from attn.errors import AttnError
from attn.engine.objective import objective_for
from attn.engine.passes import NonFiniteGuard, guarded_step
from attn.engine.precision import Precision
from attn.models import build_model
from attn.runtime import configure_torch


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


SPEC = DataSpec(1, 28, 28, 10, tuple(str(i) for i in range(10)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _training_step(model, cfg, batch: int, images=None, labels=None, spec=SPEC, device=None):
    """One full training step of ``model`` as a closure: the step of ``train_epoch`` without the
    data loader, compiled as ``train.compile`` says (among the overrides, like ``train.precision``).
    Default input: random MNIST-shaped images and labels."""
    device = device or torch.device("cpu")
    optimizer = build_optimizer(model, cfg.train)
    forward = compile_training(model, cfg.train.compile, device, print)
    if images is None:
        images = torch.randn(batch, 1, 28, 28)
        labels = torch.randint(0, 10, (batch,))
    images, labels = images.to(device), labels.to(device)
    objective = objective_for(spec)
    slots = objective.all_slots() if cfg.train.compile != "off" else objective.slots(labels)
    guard = NonFiniteGuard(cfg.train.max_nonfinite_steps)
    precision = Precision(cfg.train.precision, device)  # train.precision=bf16 among the overrides

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            terms = objective.loss(forward(images, **slots), labels, cfg.train.rl_coef)
        precision.backward(terms.total)
        guarded_step(model, optimizer, guard, cfg.train.grad_clip, precision)

    return step


def _rates(steps_of: list, batch: int, steps: int, repeats: int, device=None) -> list[list[float]]:
    """Images/s of each step closure, one value per repeat. Each repeat runs every closure for
    ``steps`` steps in turn, so that closures measured together see the same machine (this one's
    speed drifts by tens of percent within minutes). A warm-up first (it also pays for
    ``torch.compile``). On a GPU every block ends with a synchronisation."""
    device = device or torch.device("cpu")
    for step in steps_of:
        for _ in range(max(steps // 10, 3)):
            step()
    rates: list[list[float]] = [[] for _ in steps_of]
    for _ in range(repeats):
        for step, out in zip(steps_of, rates):
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            out.append(steps * batch / (time.perf_counter() - start))
    return rates


def _training_rate(model, cfg, batch: int, steps: int, repeats: int, images=None, labels=None, spec=SPEC,
                   device=None) -> list[float]:
    """Images/s of full training steps of one model, one value per repeat (see :func:`_rates`)."""
    step = _training_step(model, cfg, batch, images, labels, spec, device)
    return _rates([step], batch, steps, repeats, device)[0]


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _peak_rss_mb()


def _row(name: str, model, cfg, rates: list[float], batch: int, steps: int, repeats: int, device=None, **extra) -> dict:
    """One benchmark result: throughput (median over repeats), memory (process RSS on CPU, peak
    allocated GPU memory on a GPU), the model's shape, the machine."""
    device = device or torch.device("cpu")
    ips = statistics.median(rates)
    m = cfg.model
    return {
        "name": name,
        "images_per_s": round(ips, 1),
        "ms_per_step": round(1000.0 * batch / ips, 3),
        "peak_mem_mb": round(_peak_mb(device), 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": batch,
        "steps": steps,
        "repeats": repeats,
        "rates": [round(r, 1) for r in rates],
        **extra,
        "precision": cfg.train.precision,
        "compile": cfg.train.compile,
        "patch": m.retina.patch_size,
        "scales": m.retina.num_scales,
        "hidden": m.hidden_size,
        "core": m.core.kind,
        "params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }


def bench_ram(batch: int, steps: int, repeats: int, overrides: list[str], device=None,
              versus_loop: bool = False, versus_eager: bool = False, image: int = 28) -> list[dict]:
    """One row, and one more for each comparison, all measured in alternation: ``versus_loop``, the
    same model through the generic autograd loop (the rnn core otherwise runs the hand-written
    episode); ``versus_eager``, with ``train.compile`` set, the same model uncompiled. ``image``: side
    of the random gray input (28: MNIST; 60 and 100: the RAM paper's canvases)."""
    device = device or torch.device("cpu")
    cfg = load_config(None, overrides)
    configure_torch()
    variants = [(cfg, False)] + ([(cfg, True)] if versus_loop else [])
    if versus_eager and cfg.train.compile != "off":
        variants.append((load_config(None, overrides + ["train.compile=off"]), False))
    spec = DataSpec(1, image, image, 10, SPEC.class_names)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(batch, 1, image, image, generator=g), torch.randint(0, 10, (batch,), generator=g)
    models, steps_of = [], []
    for variant, loop in variants:
        torch.manual_seed(variant.train.seed)
        model = build_model(variant.model, spec).to(device)
        model.hand_written = model.hand_written and not loop
        models.append(model)
        steps_of.append(_training_step(model, variant, batch, images, labels, spec, device))
    rates = _rates(steps_of, batch, steps, repeats, device)
    return [
        _row("ram", model, variant, r, batch, steps, repeats, device, glimpses=variant.model.num_glimpses, image=image,
             episode="hand-written" if model.hand_written and variant.train.compile == "off" else "loop")
        for model, (variant, _), r in zip(models, variants, rates)
    ]


DRAM_BASE = [
    "data.task=svhn",
    "model.name=dram",
    "model.retina.patch_size=12",
    "model.retina.num_scales=2",
    "model.hidden_size=512",
    "model.core.kind=lstm",
    "model.glimpses_per_digit=3",
]


def bench_dram(
    batch: int, steps: int, repeats: int, overrides: list[str], device=None, image: int = 54, channels: int = 1
) -> dict:
    device = device or torch.device("cpu")
    cfg = load_config(None, DRAM_BASE + overrides)
    configure_torch()
    torch.manual_seed(cfg.train.seed)
    L = cfg.max_tokens()
    spec = DataSpec(channels, image, image, 11, ("<end>",) + tuple("1234567890"), max_tokens=L, end_token=0)
    model = build_model(cfg.model, spec).to(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, channels, image, image, generator=g)
    digits = min(3, L - 1)
    lengths = torch.arange(batch) % digits + 1  # 1..3 digits, then the end token
    labels = torch.full((batch, L), IGNORE_INDEX)
    for i, n in enumerate(lengths.tolist()):
        labels[i, :n] = torch.randint(1, 11, (n,), generator=g)
        labels[i, n] = 0
    rates = _training_rate(model, cfg, batch, steps, repeats, images, labels, spec=spec, device=device)
    m = cfg.model
    return _row(
        "dram",
        model,
        cfg,
        rates,
        batch,
        steps,
        repeats,
        device,
        context=m.context.kind,
        image=f"{channels}x{image}",
        glimpses_per_digit=m.glimpses_per_digit,
        glimpses=(digits + 1) * m.steps_per_token(),
    )


def _count_layer_positions(model) -> list[int]:
    """A counter of token positions processed by every Transformer layer (one layer pass of one
    position = 1); recurrent cores count one pass per step."""
    from attn.models.cores.attention import RelativeLayer

    counter = [0]
    for mod in model.modules():
        if isinstance(mod, RelativeLayer):
            block = mod.block

            def counted(x, attend, read, _block=block):
                counter[0] += x.shape[1] if x.dim() == 3 else 1
                return _block(x, attend, read)

            mod.block = counted
        elif type(mod).__name__ == "GPT2Block":
            # ln_1 opens every block, in GPT2Model's pass over a sequence and in the core's cached step

            def pre_hook(_m, args):
                counter[0] += args[0].shape[1] if args[0].dim() == 3 else 1

            mod.ln_1.register_forward_pre_hook(pre_hook)
    return counter


ROLLOUTS = ("stepwise", "two_phase", "prefix")


def bench_cores(batch: int, steps: int, repeats: int, glimpses: list[int], overrides: list[str]) -> list[dict]:
    """Every core at each T. Transformer cores in three rollouts of a training episode: ``stepwise``
    (the default: cached steps inside the graph), ``two_phase`` (cached steps without gradients, then
    one causal pass) and ``prefix`` (no cache: the whole prefix re-run every step, the seed's style).
    layer_passes: token positions each layer processed in one training forward."""
    configure_torch()
    rows = []
    for kind in ("rnn", "lstm", "gpt2", "trxl", "gtrxl"):
        transformer = kind in ("gpt2", "trxl", "gtrxl")
        for rollout in ROLLOUTS if transformer else ("-",):
            for T in glimpses:
                extra = [f"model.core.kind={kind}", f"model.num_glimpses={T}"]
                if rollout == "prefix":
                    extra.append("model.core.use_cache=false")
                elif rollout != "-":
                    extra.append(f"model.core.rollout={rollout}")
                cfg = load_config(None, extra + overrides)
                torch.manual_seed(cfg.train.seed)
                model = build_model(cfg.model, SPEC)
                counter = _count_layer_positions(model)
                images = torch.randn(batch, 1, 28, 28)
                model(images)  # warm-up
                counter[0] = 0
                start = time.perf_counter()
                model(images)
                episode_ms = 1000.0 * (time.perf_counter() - start)
                passes = counter[0] if transformer else T
                layers = cfg.model.core.num_layers if transformer else 1
                rates = _training_rate(model, cfg, batch, steps, repeats)
                rows.append(
                    {
                        "name": "cores",
                        "core": kind,
                        "rollout": rollout,
                        "glimpses": T,
                        "images_per_s": round(statistics.median(rates), 1),
                        "rates": [round(r, 1) for r in rates],
                        "episode_ms": round(episode_ms, 2),
                        "layer_passes": passes // layers,
                        "batch": batch,
                        "hidden": cfg.model.hidden_size,
                        "layers": layers,
                        "threads": torch.get_num_threads(),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    _add_speedups(rows)
    return rows


def _add_speedups(rows: list[dict]) -> None:
    """Each Transformer row's training speed over its own core's ``prefix`` row at the same T."""
    prefix = {(r["core"], r["glimpses"]): r["images_per_s"] for r in rows if r["rollout"] == "prefix"}
    for r in rows:
        base = prefix.get((r["core"], r["glimpses"]))
        r["vs_prefix"] = round(r["images_per_s"] / base, 2) if base else "-"


def bench_background(batch: int, steps: int, repeats: int, canvases: list[int], device=None) -> list[dict]:
    from attn.data.background import Canvas

    device = device or torch.device("cpu")
    configure_torch()
    g = torch.Generator(device).manual_seed(0)
    crops = torch.randint(0, 256, (batch, 1, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    crops = crops.to(device)
    ids = torch.arange(batch)
    rows = []
    for n in canvases:
        canvas = Canvas(n)
        for mode in ("train", "eval"):
            train = mode == "train"
            canvas.place(crops, train=train, ids=ids, generator=g)  # warm-up
            rates = []
            for _ in range(repeats):
                _sync(device)
                start = time.perf_counter()
                for _ in range(steps):
                    canvas.place(crops, train=train, ids=ids, generator=g)
                _sync(device)
                rates.append(batch * steps / (time.perf_counter() - start))
            rows.append(
                {
                    "name": "background",
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "canvas": n,
                    "mode": mode,
                    "batch": batch,
                    "images_per_s": round(statistics.median(rates), 1),
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
    p.add_argument("which", choices=["ram", "dram", "cores", "background"], help="what to benchmark")
    p.add_argument("--batch", type=int, default=None, help="images per step (ram, cores 128; dram 64)")
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per repeat (ram 200, dram 20, cores 10; background: batches, 10)"
    )
    p.add_argument("--glimpses", type=int, nargs="+", default=[6, 12, 24], help="cores: values of T")
    p.add_argument("--canvas", type=int, nargs="+", default=[110, 186, 224], help="background: canvas sides")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: torch's, one per core); 1 is how the experiment files' single-threaded "
        "workers train (ray.threads_per_worker: 1)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (ram, dram, background)")
    p.add_argument(
        "--versus-loop", action="store_true",
        help="ram: also measure the generic autograd loop (in alternation) beside the hand-written rnn episode",
    )
    p.add_argument(
        "--versus-eager", action="store_true",
        help="ram with train.compile set: also measure the uncompiled step (in alternation)",
    )
    p.add_argument("--image", type=int, default=None, help="ram, dram: side of the random input images (28, 54)")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="dram: channels of the input images")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.num_glimpses=8")
    args = p.parse_intermixed_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads {args.threads}: give 1 or more threads", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA GPU is visible to PyTorch here; use --device cpu", file=sys.stderr)
        return 2
    try:
        if args.which == "ram":
            rows = bench_ram(args.batch or 128, args.steps or 200, args.repeats, args.overrides, device,
                             args.versus_loop, args.versus_eager, args.image or 28)
            keys = ["name", "device", "episode", "compile", "precision", "core", "image", "glimpses", "batch",
                    "images_per_s", "ms_per_step", "peak_mem_mb", "threads"]
        elif args.which == "dram":
            rows = [bench_dram(args.batch or 64, args.steps or 20, args.repeats, args.overrides, device, args.image or 54,
                               args.channels)]
            keys = ["name", "device", "compile", "precision", "core", "context", "image", "glimpses_per_digit",
                    "glimpses", "batch", "images_per_s", "ms_per_step", "peak_mem_mb", "threads"]
        elif args.which == "background":
            rows = bench_background(args.batch or 128, args.steps or 10, args.repeats, args.canvas, device)
            keys = ["name", "device", "canvas", "mode", "batch", "images_per_s", "threads"]
        else:
            rows = bench_cores(args.batch or 128, args.steps or 10, args.repeats, args.glimpses, args.overrides)
            keys = ["core", "rollout", "glimpses", "images_per_s", "vs_prefix", "episode_ms", "layer_passes", "layers",
                    "batch", "threads"]
    except AttnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    _print_table(rows, keys)
    for row in rows:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
