"""Reliability without a server or a cluster: non-finite steps, the tracking store's opening, an
unreachable MLflow server at start.

A flaky MLflow server and a full disk: tests/e2e/test_reliability.py; a killed worker during an
MLflow outage: tests/e2e/test_cluster.py (on a two-node cluster).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from attn.config import load_config
from attn.data import BatchLoader, build_data
from attn.engine.passes import NonFiniteGuard, train_epoch
from attn.engine.optim import build_optimizer
from attn.errors import TrainingDiverged, TrackingError
from attn.models import build_model
from helpers.servers import free_port
from helpers.cli import EXPERIMENT, run_cli


def _small_setup(batches: int = 4):
    cfg = load_config(EXPERIMENT, ["data.train_subset=1000", "train.batch_size=64"])
    data = build_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.spec, (data.mean, data.std))
    loader = BatchLoader(data.train, 64, shuffle=True, seed=0)
    return cfg, data, model, build_optimizer(model, cfg.train), loader


def _poison(model, bad_calls: set[int]):
    """Make the classifier's output NaN on the given forward calls (0-based)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        i = calls["n"]
        calls["n"] += 1
        return output * math.nan if i in bad_calls else output

    return model.classifier.register_forward_hook(hook)


def test_a_non_finite_step_is_skipped_and_counted():
    cfg, data, model, opt, loader = _small_setup()
    _poison(model, {2})
    guard = NonFiniteGuard(limit=3)
    out = train_epoch(model, loader, data, opt, rl_coef=1.0, device=torch.device("cpu"), nonfinite=guard)
    assert out["nonfinite_steps"] == 1.0 and guard.in_a_row == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(out["loss"])


def test_consecutive_non_finite_steps_stop_without_touching_the_weights():
    cfg, data, model, opt, loader = _small_setup()
    _poison(model, set(range(1, 100)))
    guard = NonFiniteGuard(limit=3)
    before = None

    def snapshot_after_first_step(i, n):
        nonlocal before
        if i == 1:
            before = copy.deepcopy(model.state_dict())

    with pytest.raises(TrainingDiverged, match=r"training steps in a row .*\(train.max_nonfinite_steps = 3\)") as e:
        train_epoch(
            model, loader, data, opt, rl_coef=1.0, device=torch.device("cpu"), nonfinite=guard,
            progress=snapshot_after_first_step,
        )
    # the device counters are read every min(50, limit) steps: it stops within 3 steps of the third bad one
    assert 3 <= int(str(e.value).split()[0]) <= 5, str(e.value)
    after = model.state_dict()
    assert before is not None and all(torch.equal(before[k], after[k]) for k in before)


def test_opening_the_store_creates_nothing_and_leaves_failures_to_the_calls_that_report_them(tmp_path):
    """open_store runs beside Ray's start-up: it creates a new SQLite store's tables but no experiment
    or run, and a store it cannot open raises nothing there (ensure_experiment reports it)."""
    from mlflow.tracking import MlflowClient

    from attn.tracking import ensure_experiment, open_store

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    (tmp_path / "new").mkdir()
    open_store(uri)
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []

    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    open_store(f"sqlite:///{broken}")
    with pytest.raises(TrackingError, match="cannot use the MLflow tracking store sqlite:///"):
        ensure_experiment(f"sqlite:///{broken}", "x")


def test_unreachable_server_at_start_is_one_line_before_any_work(tmp_path):
    proc = run_cli(tmp_path, str(EXPERIMENT), f"tracking.tracking_uri=http://127.0.0.1:{free_port()}", timeout=120)
    assert proc.returncode == 1
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: cannot reach the MLflow server at http://127.0.0.1:") and "tracking.tracking_uri" in last
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("user_timeout", [None, "7"])
def test_the_tracker_fails_fast_inside_mlflow_without_changing_the_process_environment(monkeypatch, user_timeout):
    """A write to a server that is not there returns at once (MLflow's own 7 retries with growing
    waits would hold training for minutes), buffered with one warning; MLflow's limits for the
    process's other clients, and any the user set, are as they were before."""
    import os
    import time

    from attn.tracking import MlflowTracker

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    if user_timeout is None:
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", user_timeout)
    lines: list[str] = []
    tracker = MlflowTracker(f"http://127.0.0.1:{free_port()}", "0" * 32, retry_timeout_s=0, log=lines.append)
    t0 = time.time()
    tracker.log_metrics({"val_error": 50.0}, step=0)
    assert time.time() - t0 < 10 and any("unreachable" in line for line in lines), lines
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    assert os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == user_timeout


def test_a_training_worker_sets_the_fail_fast_limits_for_its_whole_process(monkeypatch):
    """In a worker (attn's own process) MLflow's system-metrics thread writes beside the tracker: the
    limits hold for every client there; a value the user set wins."""
    import os

    from attn.tracking import fail_fast_in_this_process

    # set, then removed, so that monkeypatch puts the variable back as it was (absent) after the test
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "40")
    fail_fast_in_this_process()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "40"
