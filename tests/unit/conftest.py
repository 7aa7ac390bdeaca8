"""The fast tier's guard: a unit test that starts Ray or an MLflow server fails (such a test belongs
in tests/e2e, where the tier's time and the machine's CPUs are budgeted for it)."""

from __future__ import annotations

import time

import pytest

from helpers.processes import kill_pids, marked_servers, with_descendants


@pytest.fixture(autouse=True)
def _fast_tier_guard(monkeypatch):
    """``ray.init`` fails the test at once; and after the test, any Ray GCS or raylet or ``mlflow
    server`` of this session that appeared while it ran is killed and fails the test."""
    import ray

    called = []

    def refuse(*args, **kwargs):
        called.append(args or kwargs)
        pytest.fail("ray.init in a unit test: a test that starts Ray belongs in tests/e2e", pytrace=False)

    monkeypatch.setattr(ray, "init", refuse)
    before = set(marked_servers())
    yield
    started = {pid: what for pid, what in marked_servers().items() if pid not in before}
    if started:
        kill_pids(with_descendants(list(started)))
        time.sleep(0.2)
    problems = []
    if called:
        problems.append("it called ray.init")
    if started:
        problems.append("it started " + ", ".join(f"{what} (pid {pid})" for pid, what in sorted(started.items())))
    if problems:
        pytest.fail(f"unit test: {'; '.join(problems)}; a test that starts Ray or an MLflow server belongs in "
                    "tests/e2e", pytrace=False)
