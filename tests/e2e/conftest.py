"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import os

import pytest
from filelock import FileLock

from helpers.cli import EXPERIMENT, FINISHED_RUN_ARGS, mlflow_client, only_run, ray_with_cpus, run_cli, running_ray_head


@pytest.fixture(scope="session")
def ray_head():
    """A 2-CPU Ray head (`ray start`, as on a cluster) shared by the runs of one pytest process that
    join it with ``ray.address`` (tests under pytest-xdist run one at a time per process); stopped at
    the end of the session: a local Ray's start costs seconds of CPU that most runs here need not pay
    again. With Ray's dashboard, as the cluster files start a head (Ray Train's placement-group
    cleaner needs its state API). A run that joins it takes the cluster defaults (ray.max_failures 3).
    The sweeps, the shared MNIST run, the full-disk run and the authenticated server's run start
    run.py's own local Ray."""
    with running_ray_head(num_cpus=2, dashboard=True) as address:
        yield address


@pytest.fixture(scope="session")
def finished_mnist_run(tmp_path_factory):
    """One short `python run.py experiments/mnist_ram.yaml` (Ray Train, MLflow sqlite store in its own
    folder; a local Ray of 2 CPUs on any machine), finished: (folder, MLflow client, the run as it was
    when it finished). Trained once per session: under pytest-xdist the first worker that asks trains
    it in the workers' common temp folder, and the others wait for it (a file lock) and read it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    cwd = shared / "finished_run"
    with FileLock(str(shared / "finished_run.lock")):
        if not (cwd / "run_id").exists():
            cwd.mkdir(exist_ok=True)
            proc = run_cli(cwd, str(EXPERIMENT), *FINISHED_RUN_ARGS, env=ray_with_cpus(2))
            assert proc.returncode == 0, proc.stderr[-3000:]
            (cwd / "console.txt").write_text(proc.stdout + proc.stderr)  # what the user saw
            (cwd / "run_id").write_text(only_run(mlflow_client(cwd)).info.run_id)
    client = mlflow_client(cwd)
    # by id: another worker's tests may have added runs (evaluations) to the store meanwhile
    return cwd, client, client.get_run((cwd / "run_id").read_text())
