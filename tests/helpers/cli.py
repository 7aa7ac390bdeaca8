"""Running `python run.py` as a user does (in a subprocess, in a folder of its own), reading the run
back through the MLflow client, and real Ray clusters started with `ray start`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.processes import SESSION_DIR, alive, command_line, kill_pids, marked_pids_matching
from helpers.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = ROOT / "experiments" / "mnist_ram.yaml"
SMALL = ["data.train_subset=3000", "data.eval_subset=500", "eval.mc_samples=2"]
RAY = str(Path(sys.executable).parent / "ray")

FINISHED_RUN_ARGS = ["data.train_subset=3000", "data.eval_subset=500", "eval.mc_samples=2", "train.epochs=4",
                     "ray.cpus_per_worker=2", "eval.viz_every=2", "eval.viz_images=8", "tracking.system_metrics=on",
                     "tracking.system_metrics_interval_s=1"]
"""The shared MNIST run: the reference of the interrupt/resume test (the pictures and system-metrics
settings do not change what a run computes) and the subject of tests/e2e/test_run_outputs.py."""


def ray_with_cpus(n: int) -> dict[str, str]:
    """Environment for a run.py that starts its own local Ray: that Ray gets ``n`` CPUs whatever the
    machine has (Ray reads RAY_OVERRIDE_RESOURCES when it starts a node). Every worker's lines reach the
    driver in full (RAY_DEDUP_LOGS=0: Ray would fold lines that differ only in numbers)."""
    return {**os.environ, "RAY_OVERRIDE_RESOURCES": f'{{"CPU": {n}}}', "RAY_DEDUP_LOGS": "0"}


def run_cli(cwd: Path, *args: str, timeout: int = 400, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        print(proc.stdout[-5000:], proc.stderr[-5000:])
    return proc


def run_clis_together(jobs: list[tuple[Path, list[str]]], timeout: int = 540) -> list[subprocess.CompletedProcess]:
    """`python run.py ARGS` in each (folder, ARGS) at the same time (on a shared Ray cluster their
    start-up and Ray's scheduling overlap); waits for all, kills any still running at ``timeout``
    (below pytest's own timeout, so that their output is printed)."""
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
def background_run(cwd: Path, *args: str, env: dict[str, str] | None = None):
    """`python run.py ARGS` in its own process group, output piped; on exit, if still running, the
    whole group is killed (the driver's own Ray with it)."""
    driver = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, env=env,
    )
    try:
        yield driver
    finally:
        if driver.poll() is None:
            with contextlib.suppress(ProcessLookupError):
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


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """A metric's (step, value) pairs in the order MLflow holds them (no sorting, no de-duplication)."""
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def _cluster_needles(address: str) -> tuple[str, ...]:
    """What the command lines of the Ray cluster at ``address`` hold: its GCS, raylets, workers and
    log monitors name the GCS; ":{port}" also finds the Ray client server, which names the GCS by
    the node's other address."""
    port = address.rsplit(":", 1)[1]
    return f":{port}", f"--gcs-address={address}", f"--gcs_address={address}"


def ray_processes_titled(address: str, title: str) -> list[int]:
    """The processes of the Ray cluster at ``address`` (a head of ``running_ray_head``) whose title
    starts with ``title``: Ray renames a worker after its actor (``ray::RayTrainWorker``)."""
    return [p for p in marked_pids_matching(*_cluster_needles(address))
            if " ".join(command_line(p)).startswith(title)]


def join_node(address: str, cpus: int, *args: str) -> None:
    """``ray start`` one more node with ``cpus`` CPUs into the cluster at ``address`` (on loopback);
    ``args``: more ``ray start`` options. :func:`running_ray_head`'s teardown stops it too."""
    join = subprocess.run(
        [RAY, "start", f"--address={address}", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1",
         "--disable-usage-stats", *args],
        capture_output=True, text=True, timeout=120,
    )
    assert join.returncode == 0, join.stderr[-3000:]


@contextlib.contextmanager
def running_ray_head(num_cpus: int = 2, extra_nodes: tuple[int, ...] = (), dashboard: bool = False):
    """A real Ray cluster started with `ray start` (as on a cluster): a head with ``num_cpus`` CPUs and
    one more node per entry of ``extra_nodes`` (its CPUs) joined to it on loopback; stopped on exit
    (also on failure). Yields the head's address. ``dashboard``: with Ray's dashboard, on free ports
    (as the cluster files start it): Ray Train's placement-group cleaner asks its state API whether a
    run's controller lives; without it that check has reported a live controller dead beside other
    Rays of the machine, and the cleaner removed a running run's placement group.

    Teardown stops this cluster's processes only: those whose command line names its temp folder or
    its GCS port (its GCS, raylets, workers, dashboard and log monitors), not the rest of the session."""
    port = free_port()
    temp = SESSION_DIR / f"h{port}"
    address = f"127.0.0.1:{port}"
    try:
        # Ray's fixed defaults (the dashboard's 8265, its agent's 52365, the client server's 10001)
        # may belong to another Ray of the machine
        ports = [f"--dashboard-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                 f"--ray-client-server-port={free_port()}"] if dashboard else ["--include-dashboard=false"]
        start = subprocess.run(
            [RAY, "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--node-ip-address=127.0.0.1",
             *ports, "--disable-usage-stats", f"--temp-dir={temp}"],
            capture_output=True, text=True, timeout=120,
        )
        assert start.returncode == 0, start.stderr[-3000:]
        for cpus in extra_nodes:
            join_node(address, cpus)
        yield address
    finally:
        needles = (str(temp), *_cluster_needles(address))
        mine = marked_pids_matching(*needles)
        kill_pids(mine, signal.SIGTERM)
        deadline = time.time() + 3  # a worker blocked in a call may not answer SIGTERM
        while time.time() < deadline and any(alive(p) for p in mine):
            time.sleep(0.2)
        kill_pids(marked_pids_matching(*needles), signal.SIGKILL)
        import shutil

        shutil.rmtree(temp, ignore_errors=True)
