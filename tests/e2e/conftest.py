"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest

from helpers.cli import EXPERIMENT, FINISHED_RUN_ARGS, mlflow_client, only_run, ray_with_cpus, run_cli


@pytest.fixture(scope="session")
def finished_mnist_run(tmp_path_factory):
    """One short `python run.py experiments/mnist_ram.yaml` (Ray Train, MLflow sqlite store in its own
    folder; a local Ray of 2 CPUs on any machine), finished: (folder, MLflow client, the run as it was when it finished)."""
    cwd = tmp_path_factory.mktemp("finished_run")
    proc = run_cli(cwd, str(EXPERIMENT), *FINISHED_RUN_ARGS, env=ray_with_cpus(2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cwd / "console.txt").write_text(proc.stdout + proc.stderr)  # what the user saw
    client = mlflow_client(cwd)
    return cwd, client, only_run(client)
