"""Reliability: non-finite steps, a flaky MLflow server, an unreachable one, a full disk.

A killed worker during an MLflow outage is in test_cluster.py (on a two-node cluster).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import time

import pytest
import torch

from attn.config import load_config
from attn.data import BatchLoader, build_data
from attn.engine.passes import NonFiniteGuard, train_epoch
from attn.engine.optim import build_optimizer
from attn.errors import TrainingDiverged, TrackingError
from attn.models import build_model
from test_cluster import free_port, mlflow_server
from test_training import EXPERIMENT, run_cli


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

    with pytest.raises(TrainingDiverged, match=r"3 training steps in a row .*\(train.max_nonfinite_steps = 3\)"):
        train_epoch(
            model, loader, data, opt, rl_coef=1.0, device=torch.device("cpu"), nonfinite=guard,
            progress=snapshot_after_first_step,
        )
    after = model.state_dict()
    assert before is not None and all(torch.equal(before[k], after[k]) for k in before)


def test_tracker_buffers_while_the_server_is_down_and_delivers_once_it_is_back(tmp_path):
    """A real MLflow server on loopback, stopped mid-run and started again on the same port and store."""
    from mlflow.tracking import MlflowClient

    from attn.tracking import MlflowTracker, ensure_experiment

    port = free_port()
    lines: list[str] = []
    with mlflow_server(tmp_path / "mlflow", port=port) as uri:
        exp = ensure_experiment(uri, "flaky")
        run_id = MlflowClient(uri).create_run(exp).info.run_id
        tracker = MlflowTracker(uri, run_id, retry_timeout_s=60, log=lines.append)
        tracker.log_metrics({"val_error": 50.0}, step=0)
    # Server down: writes are buffered (an artifact as a copy: the caller deletes its file).
    art = tmp_path / "best_model.pt"
    art.write_text("weights")
    t0 = time.time()
    tracker.log_metrics({"val_error": 40.0}, step=1)
    tracker.log_artifact(str(art), "checkpoint")
    tracker.log_metrics({"val_error": 30.0}, step=2)
    assert time.time() - t0 < 10, "training must not wait on MLflow"
    art.unlink()
    assert any("unreachable" in line for line in lines)
    with mlflow_server(tmp_path / "mlflow", port=port) as uri:
        tracker.close()
        client = MlflowClient(uri)
        assert [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "val_error"), key=lambda m: m.step)] == [
            (0, 50.0), (1, 40.0), (2, 30.0)
        ]
        assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/best_model.pt"]
        assert any("is back" in line for line in lines)

        # A restarted worker group: its checkpoint's history has an epoch the run never got (3), and
        # it re-runs an epoch the run holds (2): each epoch ends up there exactly once.
        again = MlflowTracker(uri, run_id, retry_timeout_s=60, log=lines.append)
        again.sync([{"epoch": float(e), "val_error": v} for e, v in enumerate([50.0, 40.0, 30.0, 25.0])])
        again.log_metrics({"epoch": 2, "val_error": 30.0}, step=2)
        again.log_metrics({"epoch": 4, "val_error": 20.0}, step=4)
        again.log_metrics({"test_error": 21.0}, step=4)  # final metrics at the last epoch's step are kept
        again.close()
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_error"))
        assert history == [(0, 50.0), (1, 40.0), (2, 30.0), (3, 25.0), (4, 20.0)]
        assert [m.value for m in client.get_metric_history(run_id, "test_error")] == [21.0]

    # Gone for longer than retry_timeout_s: one clear error, not a hang.
    tracker = MlflowTracker(uri, run_id, retry_timeout_s=2, log=lines.append)
    tracker.log_metrics({"val_error": 20.0}, step=3)
    with pytest.raises(TrackingError, match="stayed unreachable for 2 s: 1 write"):
        tracker.close()


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


@pytest.mark.slow
def test_a_full_disk_fails_the_run_in_one_line_and_keeps_its_checkpoint(tmp_path):
    """The storage folder on a 6 MB tmpfs: the first checkpoint fits, a later one does not. The run
    fails with one line (naming the cause and --resume), marked FAILED in MLflow, and the checkpoint
    that was written stays loadable."""
    from mlflow.tracking import MlflowClient

    from attn.engine.checkpoint import load_checkpoint

    disk = tmp_path / "small-disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proc = run_cli(tmp_path, str(EXPERIMENT), "data.train_subset=1000", "data.eval_subset=200", "eval.mc_samples=1",
                       "train.epochs=4", f"ray.storage_path={disk}")
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert lines[-1].startswith("error: run ") and "No space left on device" in lines[-1], lines[-1]
        assert "--resume" in lines[-1]
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("mnist_ram").experiment_id])
        assert run.info.status == "FAILED"
        kept = [d for d in disk.glob("mnist_ram/*/checkpoint_*") if (d / "state.pt").is_file()]
        assert kept
        state, _ = load_checkpoint(sorted(kept)[0])
        assert state["epoch"] >= 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
