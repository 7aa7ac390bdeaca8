"""End to end: `python run.py` trains RAM on real MNIST through Ray Train into a real MLflow store.

Each test runs the CLI (as a user does) in a temporary working directory on the session's 2-CPU Ray
head (``ray.address``, as on a cluster), and reads the results back through the MLflow client. The
reference run (conftest's ``finished_mnist_run``) starts run.py's own local Ray of 2 CPUs.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from helpers.cli import (
    EXPERIMENT, FINISHED_RUN_ARGS, background_run, history, mlflow_client, only_run, ray_processes_titled,
    ray_with_cpus, run_cli, steps,
)
from helpers.processes import kill_pids

RESUMED = re.compile(r"resuming from (\S+): epoch (\d+), best val error")
EPOCH_LINE = re.compile(r"\bepoch (\d+)/(\d+) \|")


def _resumed_at(out: str) -> int:
    """The epoch the worker said it resumed at (from its line ``resuming from DIR: epoch k``)."""
    found = RESUMED.findall(out)
    assert len(found) == 1, f"the worker did not say once that it resumed from a checkpoint:\n{out[-3000:]}"
    return int(found[0][1])


def test_interrupt_then_resume_matches_uninterrupted(tmp_path, finished_mnist_run, ray_head):
    """Ctrl-C mid-run, then --resume on the same running Ray (the cut run's placement group must not
    outlive it): the run continues from its last checkpoint (not from scratch) into the same MLflow
    run, and ends with exactly the per-epoch curves and final metrics of a run that was never
    interrupted (same seed; that one ran on its own local Ray)."""
    on_head = f"ray.address={ray_head}"
    args = [str(EXPERIMENT), *FINISHED_RUN_ARGS, on_head]
    _, ref_client, ref_run = finished_mnist_run  # the uninterrupted reference
    ref = ref_run.data.metrics
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()
    env = ray_with_cpus(2)

    def checkpoints() -> list:
        return list(cut_dir.glob("runs/mnist_ram/*/checkpoint_*"))

    with background_run(cut_dir, *args, env=env) as driver:
        deadline = time.time() + 300
        # The second checkpoint folder: the first one is then surely registered with Ray Train.
        while time.time() < deadline and len(checkpoints()) < 2 and driver.poll() is None:
            time.sleep(0.1)
        assert len(checkpoints()) >= 2, "no checkpoint was written"
        # The worker is held where it is until the driver has ended: on a busy machine its two
        # epochs left (a second or so) could otherwise finish before Ctrl-C took effect.
        worker = ray_processes_titled(ray_head, "ray::RayTrainWorker")
        assert worker, "no Ray Train worker on the head"
        kill_pids(worker, signal.SIGSTOP)
        try:
            os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
            out, _ = driver.communicate(timeout=120)
        finally:
            kill_pids(worker, signal.SIGCONT)
    assert driver.returncode == 130, out[-3000:]
    assert "interrupted" in out and "--resume" in out, out[-3000:]
    run = only_run(mlflow_client(cut_dir))
    assert run.info.status == "KILLED"
    done_before = steps(mlflow_client(cut_dir), run.info.run_id, "val_error")
    assert len(done_before) < 4

    proc = run_cli(cut_dir, str(EXPERIMENT), "--resume", on_head, env=env)
    assert proc.returncode == 0
    out = proc.stdout + proc.stderr
    assert "resuming run" in proc.stdout
    # The worker loaded a checkpoint and went on after it: no epoch before it was trained again.
    k = _resumed_at(out)
    assert k >= 1, out[-3000:]
    trained = [int(e) for e, n in EPOCH_LINE.findall(out)]
    assert "epoch 1/4" not in out and trained == list(range(k + 1, 5)), (k, trained)
    client = mlflow_client(cut_dir)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    # The whole curves, each epoch once, equal the uninterrupted run's (not only the final numbers).
    for key in ("val_error", "train_loss"):
        got = sorted(history(client, run.info.run_id, key))
        want = sorted(history(ref_client, ref_run.info.run_id, key))
        assert [s for s, _ in got] == [0, 1, 2, 3], (key, got)
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-9), key
    for key in ("test_error", "test_error_sample", "test_error_mc", "best_val_error", "test_nll"):
        assert run.data.metrics[key] == pytest.approx(ref[key], abs=1e-9), key

    # A finished run resumed with more epochs trains on in the same MLflow run, after its last epoch.
    proc = run_cli(cut_dir, str(EXPERIMENT), "--resume", "train.epochs=5", on_head, env=env)
    assert proc.returncode == 0 and "epoch 5/5" in proc.stdout
    out = proc.stdout + proc.stderr
    assert _resumed_at(out) == 4 and [int(e) for e, _ in EPOCH_LINE.findall(out)] == [5]
    assert "worker group restarted" not in out  # the user resumed it: no failure to report
    assert sorted(steps(mlflow_client(cut_dir), run.info.run_id, "val_error")) == [0, 1, 2, 3, 4]

    # With every checkpoint of the run damaged, resuming stops before Ray starts, in one line naming the file.
    for f in cut_dir.glob("runs/mnist_ram/*/checkpoint_*/state.pt"):
        f.write_bytes(b"\x00garbage")
    proc = run_cli(cut_dir, str(EXPERIMENT), "--resume", "train.epochs=6", on_head, env=env)
    assert proc.returncode != 0
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "state.pt: unreadable checkpoint" in last, proc.stderr[-3000:]


def test_more_workers_than_cpus_is_refused_before_any_run(tmp_path, ray_head):
    # The head has 2 CPUs on any machine: 3 one-CPU workers cannot fit.
    proc = run_cli(tmp_path, str(EXPERIMENT), "ray.num_workers=3", "ray.cpus_per_worker=1", f"ray.address={ray_head}",
                   timeout=200, env=ray_with_cpus(2))
    assert proc.returncode == 2
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ray: 3 worker(s)") and "lower ray.num_workers" in last
    assert "at most 2 CPUs" in last, last
    assert not (tmp_path / "runs").exists()
    if (tmp_path / "mlflow.db").exists():
        client = mlflow_client(tmp_path)
        assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())
