"""Configurations whose step leaves parameters without a gradient train with 2 DDP workers: a
one-glimpse RAM never uses its location and baseline heads. Real DDP over gloo in two processes
(torch.multiprocessing, no Ray); the Ray Train path with 2 workers: tests/e2e/test_contexts_training.py."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from attn.config import load_config
from attn.data import BatchLoader, build_data
from attn.engine.trainer import unused_parameters
from attn.models import build_model
from helpers.cli import ROOT

ONE_GLIMPSE = ["model.num_glimpses=1", "data.train_subset=256", "data.eval_subset=64", "train.batch_size=32",
               "train.epochs=2", "eval.mc_samples=1", "eval.viz_images=0", "model.hidden_size=32"]


def test_the_probe_names_exactly_the_parameters_without_a_gradient():
    cfg = load_config(ROOT / "experiments" / "mnist_ram.yaml", ONE_GLIMPSE)
    data = build_data(cfg.data)
    model = build_model(cfg.model, data.spec, (data.mean, data.std))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    loader = BatchLoader(data.train, 32, shuffle=True, seed=0)
    unused = unused_parameters(model, loader, data, 0.01, torch.device("cpu"))
    # T = 1: no later location is drawn and no reward follows a location, so these see no loss
    assert sorted(unused) == sorted(n for n, _ in model.named_parameters() if n.startswith(("locator.", "baseline.")))
    assert torch.equal(rng, torch.get_rng_state()) and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    six = load_config(ROOT / "experiments" / "mnist_ram.yaml", [a for a in ONE_GLIMPSE if "glimpses" not in a])
    assert unused_parameters(build_model(six.model, data.spec, (data.mean, data.std)), loader, data, 0.01,
                             torch.device("cpu")) == []


WORKER = """
import sys, torch, torch.distributed as dist
from attn.config import load_config
from attn.engine.trainer import NullTracker, WorkerInfo, fit

class Reporter:
    def latest_checkpoint(self):
        return None
    def report(self, metrics, checkpoint_dir):
        pass

rank, world, init, out, experiment, overrides = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
torch.set_num_threads(1)
lines = []
wrap = lambda m, find_unused_parameters=False: torch.nn.parallel.DistributedDataParallel(
    m, find_unused_parameters=find_unused_parameters)
final = fit(load_config(experiment, overrides), WorkerInfo(rank, world, torch.device("cpu")), Reporter(), NullTracker(),
            wrap_model=wrap, log=lines.append)
if rank == 0:
    torch.save({"final": final, "lines": lines}, out)
dist.destroy_process_group()
"""


def test_a_one_glimpse_ram_trains_with_two_ddp_workers(tmp_path):
    script, out = tmp_path / "worker.py", tmp_path / "rank0.pt"
    script.write_text(WORKER)
    args = [f"file://{tmp_path / 'rendezvous'}", str(out), str(ROOT / "experiments" / "mnist_ram.yaml"), *ONE_GLIMPSE]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), *args], env=env, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    try:
        errors = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for e in errors]
    got = torch.load(out, weights_only=False)
    assert 0.0 <= got["final"]["test_error"] <= 100.0
    assert any("6 parameter(s) get no gradient" in line and "DDP looks for them" in line for line in got["lines"]), got["lines"]
