"""Test-session settings, the tiers, and the guarantee that no test leaves a process behind.

Every process started during the session (Ray's GCS, raylets and workers included, however deep)
inherits ATTN_TEST_SESSION, and every Ray it starts keeps its files in the session's folder
(helpers/processes.py); at the end of the session any survivor carrying the mark or using the folder is
killed, and the session fails.

Tiers: tests/unit (`make test-fast`: no Ray, no MLflow server) and tests/e2e (real Ray clusters,
MLflow servers, `python run.py` trainings), every test under tests/e2e marked ``e2e``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import ROOT
from helpers.processes import command_line, kill_pids, session_pids

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
# Ray Train's controller polls its workers every 2 s by default, and a worker's next report waits
# for that poll (a queue of one): the tests' epochs take well under a second, so every epoch would
# last 2 s. Polling more often changes no result (a slow poll is simply awaited in the next round).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

E2E_DIR = Path(__file__).resolve().parent / "e2e"


def _share_the_cores_between_xdist_workers() -> None:
    """Under pytest-xdist (``-n N``) each worker process gets cores / N torch threads, and so do the
    processes it starts: torch's default of one thread per core in every worker would oversubscribe
    the cores, and a torch process whose threads wait for a busy core slows down many-fold."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ["OMP_NUM_THREADS"] = threads
    os.environ["MKL_NUM_THREADS"] = threads
    # a run.py of an e2e test still asks for ray.threads_per_worker threads: waiting ones then sleep
    # instead of spinning on a core another worker needs
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    torch.set_num_threads(int(threads))


_share_the_cores_between_xdist_workers()


# The end-to-end files that take longest, longest first (their tests' durations under `make test`):
# pytest-xdist hands files to its workers in collection order (`--no-loadscope-reorder`), and a long
# file handed out last would run on after every other worker has finished.
E2E_LONGEST_FIRST = (
    "test_sweep.py", "test_training.py", "test_cluster.py", "test_reliability.py", "test_contexts_training.py",
    "test_svhn_training.py", "test_image_folder_training.py", "test_run_outputs.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)
    rank = {name: i for i, name in enumerate(E2E_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.path)).name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_processes():
    yield
    if not sys.platform.startswith("linux"):
        return
    # Ray's daemons can take tens of seconds to end on a loaded machine: the wait ends as soon as they
    # have. ATTN_LEAK_GRACE_S: the tiers test shortens it in the sessions it runs to leak on purpose.
    deadline = time.time() + float(os.environ.get("ATTN_LEAK_GRACE_S", "30"))
    while session_pids() and time.time() < deadline:
        time.sleep(0.5)  # let Ray and servers finish their own shutdown first
    left = session_pids()
    what = "; ".join(f"{pid}: {' '.join(command_line(pid))[:300] or '?'}" for pid in left)  # named before killed
    kill_pids(left)
    if left:
        # An error in the teardown of the session's last test: the run fails, with this message.
        pytest.fail(f"tests left {len(left)} process(es) of this session running (now killed): {what}", pytrace=False)


@pytest.fixture
def repo_root() -> Path:
    return ROOT
