"""Test-session settings and the guarantee that no test leaves a process behind.

Every process started during the session (Ray's GCS, raylets and workers included, however deep)
inherits ATTN_TEST_SESSION; at the end of the session any survivor carrying it is killed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

MARKER = f"attn-tests-{uuid.uuid4().hex}"
os.environ["ATTN_TEST_SESSION"] = MARKER
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
# Ray Train's controller polls its workers every 2 s by default, and a worker's next report waits
# for that poll (a queue of one): the tests' epochs take well under a second, so every epoch would
# last 2 s. Polling more often changes no result (a slow poll is simply awaited in the next round).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

ROOT = Path(__file__).resolve().parents[1]


def _marked_pids() -> list[int]:
    pids = []
    needle = f"ATTN_TEST_SESSION={MARKER}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_marked(sig: int = signal.SIGKILL) -> list[int]:
    pids = _marked_pids()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    return pids


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_processes():
    yield
    if not sys.platform.startswith("linux"):
        return
    deadline = time.time() + 10
    while _marked_pids() and time.time() < deadline:
        time.sleep(0.5)  # let Ray and servers finish their own shutdown first
    left = kill_marked()
    if left:
        print(f"\nconftest: killed {len(left)} process(es) left behind by tests: {left}", file=sys.stderr)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


FINISHED_RUN_ARGS = ["data.train_subset=3000", "data.eval_subset=500", "eval.mc_samples=2", "train.epochs=4",
                     "ray.cpus_per_worker=2", "eval.viz_every=2", "eval.viz_images=8"]
"""The shared MNIST run: the reference of the interrupt/resume test (the pictures settings do not
change what a run computes) and the subject of tests/test_run_outputs.py."""


@pytest.fixture(scope="session")
def finished_mnist_run(tmp_path_factory):
    """One short `python run.py experiments/mnist_ram.yaml` (Ray Train, MLflow sqlite store in its own
    folder), finished: (folder, MLflow client, the run as it was when it finished)."""
    from test_training import EXPERIMENT, mlflow_client, only_run, run_cli

    cwd = tmp_path_factory.mktemp("finished_run")
    proc = run_cli(cwd, str(EXPERIMENT), *FINISHED_RUN_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow_client(cwd)
    return cwd, client, only_run(client)


def assert_same_episode(got, ref, tol: float, grad_tol: tuple[float, float]) -> None:
    """Two ways of running one episode agree: ``got`` and ``ref`` are each (episode output, loss,
    {parameter name: gradient or None}); outputs and loss within ``tol``, gradients within
    ``grad_tol`` (rtol, atol), and the same parameters without a gradient."""
    import torch

    (out, loss, grads), (ref_out, ref_loss, ref_grads) = got, ref
    for field in ("log_probs", "log_pi", "baselines", "locations"):
        torch.testing.assert_close(getattr(out, field), getattr(ref_out, field), rtol=tol, atol=tol, msg=field)
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    for name, want in ref_grads.items():
        have = grads[name]
        assert (have is None) == (want is None), name
        if want is not None:
            torch.testing.assert_close(have, want, rtol=grad_tol[0], atol=grad_tol[1], msg=name)
