"""The prepared GPU check, in three parts, each printing one JSON line per row as it finishes and a
table at the end (``--parts`` picks them):

bench  full training steps (``attn.bench``) of RAM with the rnn core, RAM with a GTrXL core and DRAM
       (LSTM, cnn context) in each mode: ``train.compile`` off / default / reduce-overhead (CUDA
       graphs) x ``train.precision`` fp32 / bf16, at two batch sizes each.
fit    ``attn.engine.trainer.fit`` on CUDA inside a real ``torch.distributed`` process group (nccl,
       one rank per visible GPU, DDP-wrapped model) on small SVHN format 1 files written like the
       tests' fixture: svhn_background with the cnn, snapshot and resnet50 contexts, multinumber with
       the vit context (random backbone weights), and RAM-MNIST with ``train.compile=reduce-overhead``.
       This is what runs inside each Ray Train worker; it needs only PyTorch.
ray    (when Ray and MLflow are installed) ``python run.py experiments/mnist_ram.yaml`` on the GPU
       (Ray Train, nccl, MLflow in a local store) and a packed sweep: 8 MNIST trials at 0.125 GPU.

    python scripts/gpu_check.py [--parts bench fit ray] [--epochs 2] [--out DIR]
    python scripts/gpu_check.py --cpu        # a dry run of every part on the CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
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


BENCH_MODELS = {  # name -> (bench, overrides, two batch sizes on a GPU)
    "ram-rnn": ("ram", [], (256, 1024)),
    "ram-gtrxl": ("ram", ["model.core.kind=gtrxl", "model.readout=mean"], (256, 1024)),
    "dram-lstm": ("dram", [], (64, 256)),
}


def bench_part(cpu: bool, emit) -> None:
    """attn.bench's training steps of each model in each mode (module docstring)."""
    from attn.bench import bench_dram, bench_ram

    device = torch.device("cpu" if cpu else "cuda")
    modes = [(c, p) for c in ("off", "default", "reduce-overhead") for p in ("fp32", "bf16")]
    if cpu:  # a dry run: every model once eagerly, and the compiled path once
        modes = [("off", "fp32"), ("default", "bf16")]
    for name, (which, overrides, batches) in BENCH_MODELS.items():
        for compile_mode, precision in modes:
            for batch in ((4,) if cpu else batches):
                over = overrides + [f"train.compile={compile_mode}", f"train.precision={precision}"]
                if cpu:
                    over += ["model.hidden_size=16"]
                start = time.perf_counter()
                if which == "ram":
                    row = bench_ram(batch, 2 if cpu else 50, 1 if cpu else 2, over, device)[0]
                else:
                    row = bench_dram(batch, 2 if cpu else 10, 1 if cpu else 2, over, device)
                emit({"part": "bench", "case": name, "compile": compile_mode, "precision": precision, "batch": batch,
                      "images_per_s": row["images_per_s"], "ms_per_step": row["ms_per_step"],
                      "peak_mem_mb": row["peak_mem_mb"], "device": row["device"],
                      "wall_s": round(time.perf_counter() - start, 1)})


def fit_part(args, work: Path, emit) -> None:
    """fit() in a real process group on small fixture data (module docstring)."""
    from helpers.svhn_fixture import make_svhn_dataset

    from attn.data.multinumber import generate_multinumber

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
        ("mnist-ram-cuda-graphs", "mnist_ram.yaml", [f"train.epochs={args.epochs}", "train.batch_size=1024",
                                                     "train.compile=reduce-overhead", "data.train_subset=20000"]),
    ]
    if args.cpu:
        cases = [(n, e, o + ["ray.gpus_per_worker=0", "data.train_subset=32", "data.eval_subset=16",
                             "model.hidden_size=32", "train.batch_size=16"]
                  + (["model.core.num_heads=2", "model.core.inner_size=32"] if "mnist" not in n else []))
                 for n, e, o in cases]
    world = 1 if args.cpu else torch.cuda.device_count()
    results = str(work / "fit.json")
    torch.multiprocessing.spawn(_worker, args=(world, cases, results, not args.cpu), nprocs=world, join=True)
    for row in json.loads(Path(results).read_text()):
        emit({"part": "fit", **row})


def _run_py(work: Path, args: list[str], timeout: int) -> tuple[int, float, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)
    (work / f"console-{len(list(work.glob('console-*')))}.txt").write_text(proc.stdout + proc.stderr)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return proc.returncode, round(time.perf_counter() - start, 1), (lines[-1] if lines else "")[:300]


def ray_part(args, work: Path, emit) -> None:
    """run.py on the GPU through Ray Train, and a sweep packing 8 trials onto one GPU."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("mlflow") is None:
        emit({"part": "ray", "case": "skipped", "last_line": "Ray or MLflow is not installed here"})
        return
    gpu = ["ray.gpus_per_worker=0"] if args.cpu else ["ray.gpus_per_worker=1", "ray.cpus_per_worker=4"]
    small = ["data.train_subset=512", "data.eval_subset=256"] if args.cpu else []
    rc, wall, last = _run_py(work, [str(ROOT / "experiments" / "mnist_ram.yaml"), f"train.epochs={args.epochs}",
                                    *gpu, *small], timeout=600)
    emit({"part": "ray", "case": "run.py mnist_ram (Ray Train, nccl)" if not args.cpu else "run.py mnist_ram (gloo)",
          "rc": rc, "wall_s": wall, "last_line": last})
    packed = ["ray.gpus_per_worker=0"] if args.cpu else ["ray.gpus_per_worker=0.125", "ray.cpus_per_worker=1"]
    rc, wall, last = _run_py(work, [str(ROOT / "experiments" / "mnist_sweep.yaml"), "sweep.num_trials=8",
                                    "train.epochs=2", "train.patience=2", *packed, *small], timeout=900)
    emit({"part": "ray", "case": "sweep, 8 trials at 0.125 GPU" if not args.cpu else "sweep, 8 trials (CPU)",
          "rc": rc, "wall_s": wall, "last_line": last})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", choices=["bench", "fit", "ray"], default=["bench", "fit", "ray"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default=None, help="where to write gpu_check.json (default: a temporary folder)")
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU (gloo, 1 rank, tiny data)")
    p.add_argument("--count", type=int, default=1200, help="SVHN training images to write")
    args = p.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to PyTorch", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="attn-gpu-"))
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    if not args.cpu:
        emit({"part": "machine", "gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
              "torch": torch.__version__, "cuda": torch.version.cuda})
    parts = {"bench": lambda: bench_part(args.cpu, emit), "fit": lambda: fit_part(args, work, emit),
             "ray": lambda: ray_part(args, work, emit)}
    for part in args.parts:
        parts[part]()
    out = Path(args.out or work) / "gpu_check.json"
    out.write_text(json.dumps(rows, indent=1))
    _table(rows)
    print(f"rows in {out}; consoles and stores in {work}")
    return 0


def _table(rows: list[dict]) -> None:
    keys = ["part", "case", "compile", "precision", "batch", "images_per_s", "train_images_per_s", "ms_per_step",
            "peak_mem_mb", "peak_gpu_mb", "test_error", "rc", "wall_s"]
    keys = [k for k in keys if any(k in r for r in rows)]
    cells = [[str(r.get(k, "")) for k in keys] for r in rows if r.get("part") != "machine"]
    widths = [max(len(k), *(len(c[i]) for c in cells)) if cells else len(k) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


if __name__ == "__main__":
    sys.exit(main())
