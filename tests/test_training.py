"""End to end: `python run.py` trains RAM on real MNIST through Ray Train into a real MLflow store.

Each test starts its own local Ray cluster through the CLI (as a user does) in a temporary working
directory, and reads the results back through the MLflow client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "mnist_ram.yaml"
SMALL = ["data.train_subset=3000", "data.eval_subset=500", "eval.mc_samples=2"]

pytestmark = pytest.mark.slow


def run_cli(cwd: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        print(proc.stdout[-5000:], proc.stderr[-5000:])
    return proc


def run_clis_together(jobs: list[tuple[Path, list[str]]], timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """`python run.py ARGS` in each (folder, ARGS) at the same time (on a shared Ray cluster their
    start-up and Ray's scheduling overlap); waits for all, kills any still running at ``timeout``."""
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
        for cwd, args in jobs
    ]
    deadline = time.time() + timeout
    done = []
    try:
        for proc, (_, args) in zip(procs, jobs):
            out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
            if proc.returncode != 0:
                print(out[-5000:], err[-5000:])
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return done


@contextlib.contextmanager
def background_run(cwd: Path, *args: str):
    """`python run.py ARGS` in its own process group, output piped; killed on exit if still running."""
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        yield driver
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()


def mlflow_client(cwd: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")


def only_run(client, experiment: str = "mnist_ram"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_interrupt_then_resume_matches_uninterrupted(tmp_path, finished_mnist_run):
    """Ctrl-C mid-run, then --resume: the run continues from its last checkpoint into the same MLflow
    run, and ends with exactly the metrics of a run that was never interrupted (same seed)."""
    from conftest import FINISHED_RUN_ARGS

    args = [str(EXPERIMENT), *FINISHED_RUN_ARGS]
    ref = finished_mnist_run[2].data.metrics  # the uninterrupted reference
    cut_dir = tmp_path / "cut"
    cut_dir.mkdir()

    with background_run(cut_dir, *args) as driver:
        deadline = time.time() + 300
        while time.time() < deadline and not list(cut_dir.glob("runs/mnist_ram/*/checkpoint_*")):
            time.sleep(0.2)
        assert list(cut_dir.glob("runs/mnist_ram/*/checkpoint_*")), "no checkpoint was written"
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground process group
        out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out[-3000:]
    assert "interrupted" in out and "--resume" in out, out[-3000:]
    run = only_run(mlflow_client(cut_dir))
    assert run.info.status == "KILLED"
    done_before = steps(mlflow_client(cut_dir), run.info.run_id, "val_error")
    assert len(done_before) < 4

    proc = run_cli(cut_dir, str(EXPERIMENT), "--resume")
    assert proc.returncode == 0
    assert "resuming" in proc.stdout
    client = mlflow_client(cut_dir)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert sorted(set(steps(client, run.info.run_id, "val_error"))) == [0, 1, 2, 3]
    for key in ("test_error", "test_error_sample", "test_error_mc", "best_val_error", "test_nll"):
        assert run.data.metrics[key] == pytest.approx(ref[key], abs=1e-9), key

    # A finished run resumed with more epochs trains on in the same MLflow run.
    proc = run_cli(cut_dir, str(EXPERIMENT), "--resume", "train.epochs=5")
    assert proc.returncode == 0 and "epoch 5/5" in proc.stdout
    assert sorted(steps(mlflow_client(cut_dir), run.info.run_id, "val_error")) == [0, 1, 2, 3, 4]

    # With every checkpoint of the run damaged, resuming stops before Ray starts, in one line naming the file.
    for f in cut_dir.glob("runs/mnist_ram/*/checkpoint_*/state.pt"):
        f.write_bytes(b"\x00garbage")
    proc = run_cli(cut_dir, str(EXPERIMENT), "--resume", "train.epochs=6")
    assert proc.returncode != 0
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "state.pt: unreadable checkpoint" in last, proc.stderr[-3000:]


def test_more_workers_than_cpus_is_refused_before_any_run(tmp_path):
    proc = run_cli(tmp_path, str(EXPERIMENT), "ray.num_workers=3", "ray.cpus_per_worker=1", timeout=200)
    assert proc.returncode == 2
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ray: 3 worker(s)") and "lower ray.num_workers" in last
    assert not (tmp_path / "runs").exists()
    if (tmp_path / "mlflow.db").exists():
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


@contextlib.contextmanager
def running_ray_head(num_cpus: int = 2, extra_nodes: tuple[int, ...] = ()):
    """A real Ray cluster started with `ray start` (as on a cluster): a head with ``num_cpus`` CPUs and
    one more node per entry of ``extra_nodes`` (its CPUs) joined to it on loopback; stopped on exit
    (also on failure). Yields the head's address."""
    import socket

    from conftest import kill_marked

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_bin = Path(sys.executable).parent / "ray"
    temp = Path("/tmp") / f"ray-head-{port}"
    try:
        start = subprocess.run(
            [str(ray_bin), "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
            capture_output=True, text=True, timeout=120,
        )
        assert start.returncode == 0, start.stderr[-3000:]
        for cpus in extra_nodes:
            join = subprocess.run(
                [str(ray_bin), "start", f"--address=127.0.0.1:{port}", f"--num-cpus={cpus}",
                 "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                capture_output=True, text=True, timeout=120,
            )
            assert join.returncode == 0, join.stderr[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        kill_marked(signal.SIGTERM)
        time.sleep(2)
        kill_marked()
