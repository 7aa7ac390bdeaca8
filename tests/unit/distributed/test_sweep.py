"""Sweeps without Ray: the sweep section's schema, Optuna sampling of conditional spaces, trial
concurrency. End to end through `python run.py`: tests/e2e/test_sweep.py."""

from __future__ import annotations

import math

import optuna
import pytest
import yaml

from attn.config import load_config, validate_config
from attn.distributed.lifecycle import resolve_failures
from attn.distributed.sweep import HEAD_RESOURCE, SearchSpace, concurrency, optuna_sampler, trial_driver_resources
from attn.errors import ConfigError
from helpers.cli import ROOT


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


def test_trials_share_a_gpu_by_fractions_without_oversubscribing_its_cpus():
    """ray.gpus_per_worker 0.25: four trials per GPU, unless the node's CPUs hold fewer (each trial's
    worker keeps its ray.cpus_per_worker, and its torch threads follow them)."""
    base = ["ray.gpus_per_worker=0.25", "ray.cpus_per_worker=2", "sweep.num_trials=40"]
    cfg = load_config(ROOT / "experiments" / "mnist_sweep.yaml", base)
    assert concurrency(cfg, {"CPU": 16.0, "GPU": 1.0}) == 4  # 4 x (2 + 0.1) CPUs fit in 16
    assert concurrency(cfg, {"CPU": 64.0, "GPU": 8.0}) == 30  # 32 by GPUs, 30 by CPUs (64 / 2.1)
    assert concurrency(cfg, {"CPU": 6.0, "GPU": 1.0}) == 2  # the CPUs run out first
    eighth = load_config(ROOT / "experiments" / "mnist_sweep.yaml", base + ["ray.gpus_per_worker=0.125",
                                                                             "ray.cpus_per_worker=1"])
    assert concurrency(eighth, {"CPU": 16.0, "GPU": 1.0}) == 8


def _toy_sweep(sampler, parallel: int = 2, trials: int = 12) -> list[dict]:
    """A 12-trial sweep of a toy objective (optimum lr 1e-3, 5 glimpses, core gtrxl with 2 layers), two
    trials running at a time as on this machine: each pair is asked for before either is told."""
    space = SearchSpace(validate_config({"sweep": {"space": SPACE, "num_trials": trials}}, "s.yaml").sweep)
    study = optuna.create_study(sampler=sampler)
    drawn = []
    for _ in range(trials // parallel):
        running = [study.ask() for _ in range(parallel)]
        for trial in running:
            space(trial)
        for trial in running:
            p = trial.params
            loss = (math.log10(p["train.lr"]) + 3) ** 2 + 0.3 * (p["model.num_glimpses"] - 5) ** 2
            loss += 0.0 if p["model.core.kind"] == "gtrxl" and p.get("model.core.num_layers") == 2 else 1.0
            study.tell(trial, loss)
            drawn.append({**p, "loss": loss})
    return drawn


def test_tpe_concentrates_a_short_sweeps_later_trials_near_the_optimum():
    """sweep.num_trials 12: a quarter of the trials at random, then TPE. Over eight sampler seeds its
    last four trials score far better than its first four, and better than Optuna's default start-up
    (10 random trials, leaving two for TPE to place) does."""
    import pickle

    sweep = validate_config({"sweep": {"space": SPACE, "num_trials": 12}}, "s.yaml").sweep
    first, last = [], []
    for seed in range(8):
        sweep.seed = seed
        sampler = optuna_sampler(sweep)
        assert sampler._n_startup_trials == 3
        pickle.loads(pickle.dumps(sampler))  # Tune saves the searcher with its sampler
        losses = [t["loss"] for t in _toy_sweep(sampler)]
        first.append(sum(losses[:4]) / 4)
        last.append(sum(losses[-4:]) / 4)
    old = [sum(losses[-4:]) / 4 for losses in
           ([t["loss"] for t in _toy_sweep(optuna.samplers.TPESampler(seed=s, n_startup_trials=10))] for s in range(8))]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(last) < 0.75 * mean(first), (first, last)
    assert mean(last) < 0.8 * mean(old), (last, old)


def test_the_minute_status_line_counts_trials_by_how_they_stand():
    from types import SimpleNamespace as Trial  # the two attributes Tune's Trial gives the callback

    from attn.distributed.sweep import status_line

    trials = [Trial(status="RUNNING", last_result={"best_val_error": 9.5}), Trial(status="PENDING", last_result={}),
              Trial(status="TERMINATED", last_result={"best_val_error": 4.25, "test_error": 4.0}),
              Trial(status="TERMINATED", last_result={"best_val_error": 30.0}),
              Trial(status="ERROR", last_result=None)]
    assert status_line(trials, "best_val_error", "min", 754.0) == (
        "sweep: 1 running, 1 finished, 1 stopped, 1 errored | best best_val_error 4.25 | 12m34s")
    assert "best best_val_error 30" in status_line(trials, "best_val_error", "max", 1.0)
    assert status_line([], "best_val_error", "min", 0.0).endswith("| best best_val_error - | 0m00s")


def test_trial_drivers_stay_on_a_head_that_declares_the_head_resource():
    cfg = load_config(ROOT / "experiments" / "mnist_sweep.yaml")
    assert trial_driver_resources(cfg, {"CPU": 8.0, "GPU": 4.0}) == {"cpu": cfg.sweep.trial_driver_cpus}
    on_cluster = trial_driver_resources(cfg, {"CPU": 8.0, "GPU": 4.0, HEAD_RESOURCE: 1000.0})
    assert on_cluster == {"cpu": cfg.sweep.trial_driver_cpus, HEAD_RESOURCE: 0.001}
    # the sliver never limits how many trials run at once
    assert concurrency(cfg, {"CPU": 8.0, HEAD_RESOURCE: 1000.0}) == concurrency(cfg, {"CPU": 8.0})
    for name in ("cluster.yaml", "cluster.local.yaml"):  # the cluster files' heads declare it
        head = " ".join(yaml.safe_load((ROOT / name).read_text())["head_start_ray_commands"])
        assert f"--resources='{{\"{HEAD_RESOURCE}\":1000}}'" in head, name


@pytest.mark.parametrize("address,env,expected", [(None, None, 0), ("10.0.0.1:6379", None, 3), (None, "auto", 3)])
def test_failure_budgets_default_to_three_on_a_cluster_and_none_here(monkeypatch, capsys, address, env, expected):
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    over = [f"ray.address={address}"] if address else []
    cfg = load_config(ROOT / "experiments" / "mnist_sweep.yaml", over)
    assert cfg.ray.max_failures is None and cfg.sweep.trial_retries is None
    resolve_failures(cfg)
    assert cfg.ray.max_failures == cfg.sweep.trial_retries == expected
    said = capsys.readouterr().out
    assert ("on a cluster: ray.max_failures 3 and sweep.trial_retries 3" in said) == (expected == 3)
    given = load_config(ROOT / "experiments" / "mnist_sweep.yaml", over + ["ray.max_failures=0", "sweep.trial_retries=1"])
    resolve_failures(given)  # what the file or the command line says wins
    assert (given.ray.max_failures, given.sweep.trial_retries) == (0, 1)
