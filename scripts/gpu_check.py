"""GPU check of the training engine without Ray or MLflow (for a machine that has only PyTorch):
``attn.engine.trainer.fit`` on CUDA inside a real ``torch.distributed`` process group (nccl, one rank
per visible GPU, DDP-wrapped model), on small SVHN format 1 files written like the tests' fixture, for
the svhn_background task with the cnn, snapshot and resnet50 contexts and the multinumber task with
the vit context (random backbone weights). Prints one line per case and a JSON summary.

    python scripts/gpu_check.py [--epochs 2] [--out DIR]

Ray Train does the same through ``TorchTrainer(use_gpu=True)`` (backend nccl); this script checks what
runs inside each worker: data on the GPU (canvases made there), the models, DDP's gradient all-reduce.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from attn.config import load_config  # noqa: E402
from attn.engine.trainer import NullTracker, WorkerInfo, fit  # noqa: E402

VIT = {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 768,
       "image_size": 224, "patch_size": 16}


class _Reporter:
    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def latest_checkpoint(self):
        return None

    def report(self, metrics, checkpoint_dir):
        self.epochs.append(dict(metrics))


def _worker(rank: int, world: int, cases: list, results: str, cuda: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    ids = [rank] if cuda else None
    out = []
    for name, experiment, overrides in cases:
        cfg = load_config(str(ROOT / "experiments" / experiment), overrides)
        reporter = _Reporter()
        start = time.perf_counter()
        final = fit(
            cfg,
            WorkerInfo(rank, world, device),
            reporter,
            NullTracker(),
            wrap_model=lambda m, find_unused_parameters=False: torch.nn.parallel.DistributedDataParallel(
                m, device_ids=ids, find_unused_parameters=find_unused_parameters),
            log=(lambda line: print(f"[{name}] {line}", flush=True)) if rank == 0 else (lambda line: None),
        )
        wall = time.perf_counter() - start
        last = reporter.epochs[-1]
        out.append({
            "case": name, "world": world, "backend": dist.get_backend(), "wall_s": round(wall, 1),
            "train_images_per_s": round(float(last.get("train_images_per_s", last.get("images_per_s", 0))), 1),
            "val_error": round(float(last.get("val_error", float("nan"))), 2),
            "test_error": round(float(final.get("test_error", float("nan"))), 2),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if cuda else None,
        })
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
    if rank == 0:
        Path(results).write_text(json.dumps(out, indent=1))
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default=None, help="where to write gpu_check.json (default: a temporary folder)")
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU (gloo, 1 rank, tiny data)")
    p.add_argument("--count", type=int, default=1200, help="SVHN training images to write")
    args = p.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to PyTorch", file=sys.stderr)
        return 2
    from helpers.svhn_fixture import make_svhn_dataset

    from attn.data.multinumber import generate_multinumber

    work = Path(tempfile.mkdtemp(prefix="attn-gpu-"))
    svhn = make_svhn_dataset(work / "svhn", n_train=args.count, n_test=args.count // 6, seed=0)
    mn = work / "multinumber"
    generate_multinumber(svhn, mn, count=args.count // 2, split=(0.8, 0.1, 0.1), workers=min(8, os.cpu_count()),
                         progress=False)
    (work / "vit.json").write_text(json.dumps(VIT))
    common = [f"train.epochs={args.epochs}", "train.batch_size=64", "eval.mc_samples=2", "eval.batch_size=100",
              f"data.cache_dir={work / 'cache'}"]
    svhn_args = [f"data.data_dir={svhn}", "data.use_extra=false"] + common
    cases = [
        ("background110-cnn", "svhn_background_110.yaml", svhn_args),
        ("background186-snapshot", "svhn_background_186.yaml", svhn_args),
        ("background224-resnet50", "svhn_background_224.yaml", svhn_args + ["model.context.weights=null"]),
        ("multinumber-vit", "multinumber.yaml", [f"data.data_dir={mn}", "model.context.weights=null",
                                                 f"model.context.vit_config={work / 'vit.json'}"] + common),
    ]
    if args.cpu:
        cases = [(n, e, o + ["ray.gpus_per_worker=0", "data.train_subset=32", "data.eval_subset=16",
                             "model.hidden_size=32", "train.batch_size=16", "model.core.num_heads=2",
                             "model.core.inner_size=32"]) for n, e, o in cases]
    world = 1 if args.cpu else torch.cuda.device_count()
    results = str(Path(args.out or work) / "gpu_check.json")
    torch.multiprocessing.spawn(_worker, args=(world, cases, results, not args.cpu), nprocs=world, join=True)
    rows = json.loads(Path(results).read_text())
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
