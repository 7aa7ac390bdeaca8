"""Sweeps: the sweep section's schema, Optuna sampling of conditional spaces, trial concurrency, and
end to end through `python run.py` (Ray Tune + Ray Train + Optuna + ASHA into a real MLflow store),
including an interrupted sweep continued with --resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from PIL import Image
import yaml

from attn.config import load_config, validate_config
from attn.distributed.sweep import SearchSpace, concurrency
from attn.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import mlflow_client, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = {
    "model.core.kind": {"choice": ["rnn", "gtrxl"]},
    "model.num_glimpses": {"int": [3, 8], "step": 1},
    "train.lr": {"loguniform": [1e-4, 1e-2]},
    "model.core.num_layers": {"int": [1, 3], "when": {"model.core.kind": ["gtrxl"]}},
}


def test_shipped_sweep_files_load():
    for name in ("mnist_sweep", "svhn_sweep"):
        cfg = load_config(ROOT / "experiments" / f"{name}.yaml")
        assert cfg.sweep is not None and cfg.sweep.metric.startswith(("val_", "best_val"))


@pytest.mark.parametrize(
    "space,extra,needle",
    [
        ({"train.lrr": {"uniform": [0.1, 0.2]}}, {}, "sweep.space: 'train.lrr' is not a config key"),
        ({"lr": {"uniform": [0.1, 0.2]}}, {}, "did you mean train.lr"),
        ({"train.lr": {"uniform": [-1.0, 0.2]}}, {}, "sweep.space.train.lr: the value -1.0 makes an invalid config"),
        ({"train.lr": {"uniform": [0.3, 0.2]}}, {}, "low 0.3 is above high 0.2"),
        ({"train.lr": {"choice": [0.1], "uniform": [0.1, 0.2]}}, {}, "exactly one of choice, int, uniform, loguniform"),
        ({"model.core.num_layers": {"int": [1, 2]}}, {}, "does not apply to model.core.kind 'rnn'"),
        ({"train.lr": {"uniform": [0.1, 0.2], "when": {"model.core.kind": ["gtrxl"]}}}, {}, "must itself be a searched choice key"),
        (SPACE, {"metric": "test_error"}, "validation metrics only"),
    ],
)
def test_bad_sweep_sections_give_one_clear_error(space, extra, needle):
    with pytest.raises(ConfigError) as err:
        validate_config({"sweep": {"space": space, **extra}}, "s.yaml")
    assert needle in str(err.value) and str(err.value).startswith("s.yaml: ")


def test_conditional_space_sampled_by_optuna():
    sweep = validate_config({"sweep": {"space": SPACE}}, "s.yaml").sweep
    space = SearchSpace(sweep)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    kinds = set()
    for _ in range(40):
        trial = study.ask()
        space(trial)
        p = trial.params
        kinds.add(p["model.core.kind"])
        assert 3 <= p["model.num_glimpses"] <= 8 and 1e-4 <= p["train.lr"] <= 1e-2
        # The conditional key is drawn exactly when its condition holds.
        assert ("model.core.num_layers" in p) == (p["model.core.kind"] == "gtrxl")
        study.tell(trial, 0.0)
    assert kinds == {"rnn", "gtrxl"}


def test_concurrency_from_cluster_resources():
    cfg = load_config(ROOT / "experiments" / "mnist_sweep.yaml")  # 1 worker x 0.9 CPU + 0.1 per trial
    assert concurrency(cfg, {"CPU": 2.0}) == 2
    assert concurrency(cfg, {"CPU": 64.0}) == 12  # never more than the trials
    cfg.sweep.max_concurrent_trials = 3
    assert concurrency(cfg, {"CPU": 64.0}) == 3
    gpu = load_config(ROOT / "experiments" / "mnist_sweep.yaml", ["ray.gpus_per_worker=1", "ray.num_workers=2"])
    assert concurrency(gpu, {"CPU": 64.0, "GPU": 5.0}) == 2  # trials never wait for GPUs they cannot get
    with pytest.raises(ConfigError, match="one trial needs"):
        concurrency(gpu, {"CPU": 64.0, "GPU": 1.0})


def _sweep_file(tmp_path: Path, **sweep) -> Path:
    raw = yaml.safe_load((ROOT / "experiments" / "mnist_sweep.yaml").read_text())
    raw["data"].update(train_subset=2000, eval_subset=300)
    raw["train"].update(epochs=3, batch_size=32)
    raw["eval"]["mc_samples"] = 2
    raw["sweep"].update(sweep)
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.slow
def test_four_trial_sweep_with_optuna_and_asha(tmp_path):
    # RandomSampler(seed=2) draws learning rates good, good, bad, bad: the bad ones reach ASHA's first
    # rung after both good ones and must be stopped there.
    path = _sweep_file(
        tmp_path,
        num_trials=4,
        sampler="random",
        seed=2,
        asha={"grace_period": 1, "reduction_factor": 2},
        space={"train.lr": {"choice": [2.0e-3, 1.0e-7]}, "model.num_glimpses": {"int": [3, 6]}},
    )
    proc = run_cli(tmp_path, str(path), timeout=600)
    assert proc.returncode == 0
    out = proc.stdout
    assert "<- best" in out and "best trial" in out and "trial_id" in out

    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name("tiny_sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("attn.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.num_trials"] == "4"
    stopped = [c for c in children if c.data.tags.get("attn.status") == "stopped_early"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert all(c.info.status == "KILLED" and c.data.tags["attn.stopped_by"] == "asha" for c in stopped)
    assert len(stopped) + len(finished) == 4
    # ASHA stops a trial whose learning rate cannot learn (1e-7) once a good one reached the rung.
    assert any(c.data.params["train.lr"] == "1e-07" for c in stopped), [c.data.params["train.lr"] for c in stopped]
    assert finished and all(c.data.params["train.lr"] == "0.002" for c in finished)
    for c in children:
        history = client.get_metric_history(c.info.run_id, "val_error")
        assert len(history) >= 1 and [m.step for m in history] == list(range(len(history)))
    for c in finished:
        assert "test_error" in c.data.metrics and len(client.get_metric_history(c.info.run_id, "val_error")) == 3
        assert {a.path for a in client.list_artifacts(c.info.run_id, "checkpoint")} >= {"checkpoint/best_model.pt"}

    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "best_config.yaml", "comparison"} <= arts
    picture = Path(client.download_artifacts(parent.info.run_id, "comparison/trials_parallel.png", str(tmp_path)))
    assert Image.open(picture).size[0] > 400
    # trial runs are named by what they tried
    for c in children:
        lr, g = c.data.params["train.lr"], c.data.params["model.num_glimpses"]
        assert c.info.run_name.endswith(f"lr={float(lr):.3g} num_glimpses={g}"), c.info.run_name
    best_file = Path(client.download_artifacts(parent.info.run_id, "best_config.yaml", str(tmp_path)))
    best = load_config(best_file)
    assert best.sweep is None and best.train.lr == pytest.approx(2e-3)
    assert parent.data.tags["attn.best_run_id"] in {c.info.run_id for c in finished}


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    path = _sweep_file(
        tmp_path,
        num_trials=3,
        sampler="random",
        seed=0,
        asha=None,
        space={"model.num_glimpses": {"int": [3, 6]}},
    )
    cmd = [sys.executable, str(ROOT / "run.py"), str(path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_out, done_before = [], []
    try:
        deadline = time.time() + 400
        for line in proc.stdout:
            first_out.append(line)
            if " finished" in line and line.startswith("sweep: trial "):
                done_before.append(line.split()[2])
                if len(done_before) == 1:
                    os.kill(proc.pid, signal.SIGTERM)  # as a scheduler or `kill` stops it, after one trial finished
            if time.time() > deadline:
                break
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(first_out)
    assert proc.returncode == 130, text[-3000:]
    assert "continue it with --resume" in text

    again = run_cli(tmp_path, str(path), "--resume", timeout=600)
    assert again.returncode == 0
    started = [line.split()[2] for line in again.stdout.splitlines() if line.startswith("sweep: trial ") and " started" in line]
    assert not set(done_before) & set(started)  # finished trials were not run again
    client = mlflow_client(tmp_path)
    exp = client.get_experiment_by_name("tiny_sweep")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 3 and len(runs) == 4
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3
    for c in children:  # one curve per trial, no epoch logged twice (a cut trial went on from its checkpoint)
        steps = [m.step for m in client.get_metric_history(c.info.run_id, "val_error")]
        assert steps == [0, 1, 2]
