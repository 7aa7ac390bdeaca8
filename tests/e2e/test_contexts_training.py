"""Every DRAM context option trains through Ray Train into MLflow: the shipped extended-background
and multinumber experiments, shrunk to a few steps on small format 1 files the test writes (random
backbone weights: nothing is downloaded). resnet50 runs on 2 DDP workers (a frozen backbone inside
DDP, and model.policy_grad=detached, which leaves parameters without a gradient)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.svhn_fixture import make_svhn_dataset
from helpers.cli import ROOT, mlflow_client, only_run, run_clis_together, steps

TINY = [
    "data.max_digits=2",
    "data.train_subset=48",
    "data.eval_subset=16",
    "model.hidden_size=32",
    "model.conv_channels=[4,4,8]",
    "model.retina.num_scales=2",
    "model.core.num_heads=2",
    "model.core.inner_size=32",
    "model.glimpses_per_digit=1",
    "train.epochs=1",
    "train.batch_size=16",
    "eval.mc_samples=2",
    "eval.batch_size=16",
    "ray.gpus_per_worker=0",
    "ray.cpus_per_worker=1",
]
VIT = {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 48,
       "image_size": 32, "patch_size": 16}


@pytest.fixture(scope="module")
def svhn(tmp_path_factory):
    return make_svhn_dataset(tmp_path_factory.mktemp("svhn_ctx"), n_train=80, n_test=24, seed=4)


CASES = {
    "cnn": ("svhn_background_110.yaml", ["data.canvas_size=80"]),
    "snapshot": ("svhn_background_186.yaml", ["data.canvas_size=96", "model.context.snapshot_size=40"]),
    # 2 DDP workers, and a policy gradient that leaves the upper stream without a gradient (DDP told so)
    "resnet50": ("svhn_background_224.yaml", ["data.canvas_size=64", "model.context.weights=null", "ray.num_workers=2",
                                              "model.policy_grad=detached"]),
    "vit": ("multinumber.yaml", ["model.context.weights=null"]),
}


@pytest.fixture(scope="module")
def multinumber(svhn, tmp_path_factory):
    from attn.data.multinumber import generate_multinumber

    out = tmp_path_factory.mktemp("mn") / "multinumber"
    generate_multinumber(svhn, out, size=96, box=32, count=60, split=(0.6, 0.2, 0.2), workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(ray_head, svhn, multinumber, tmp_path_factory):
    """All four contexts' runs, started together on the session's Ray head (2 CPUs: two 1-CPU runs at a
    time, Ray queues the rest): {context: (folder, finished process)}."""
    jobs = {}
    for context, (experiment, extra) in CASES.items():
        folder = tmp_path_factory.mktemp(f"ctx_{context}")
        if context == "vit":  # on the multinumber task: two numbers, a separator, 6 label slots
            (folder / "vit.json").write_text(json.dumps(VIT))
            data = [f"data.data_dir={multinumber}", f"model.context.vit_config={folder / 'vit.json'}"]
            tiny = [t for t in TINY if not t.startswith("data.max_digits")]
        else:
            data = [f"data.data_dir={svhn}", "data.use_extra=false"]
            tiny = TINY
        jobs[context] = (folder, [str(ROOT / "experiments" / experiment), *data, f"data.cache_dir={folder / 'cache'}",
                                  *tiny, *extra, f"ray.address={ray_head}"])
    done = run_clis_together(list(jobs.values()), timeout=600)
    return {context: (jobs[context][0], proc) for context, proc in zip(jobs, done)}


@pytest.mark.parametrize("context", list(CASES))
def test_each_context_trains_through_ray_train(runs, context):
    experiment, _ = CASES[context]
    tmp_path, proc = runs[context]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1" in proc.stdout
    client = mlflow_client(tmp_path)
    run = only_run(client, Path(experiment).stem)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.context.kind"] == context
    assert steps(client, run.info.run_id, "val_error") == [0]
    assert "test_error_mc" in run.data.metrics
    if context == "resnet50":
        assert "get no gradient in this configuration" in proc.stdout, proc.stdout[-3000:]
