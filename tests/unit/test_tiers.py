"""The tiers' guards, each shown on a tiny generated test file run by a pytest of its own: a unit test
that starts Ray or an MLflow server fails (tests/unit/conftest.py), and a session that leaves a
process behind fails (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from helpers.cli import ROOT
from helpers.processes import command_line
from helpers.servers import free_port

TESTS = ROOT / "tests"


def _run_pytest(folder: Path, conftest: Path, test_code: str) -> subprocess.CompletedProcess:
    (folder / "conftest.py").write_text(conftest.read_text())
    (folder / "test_generated.py").write_text(test_code)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ATTN_LEAK_GRACE_S": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly", str(folder)],
        cwd=folder, capture_output=True, text=True, timeout=300, env=env,
    )


def _alive_with(needle: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and needle in " ".join(command_line(int(p.name)))]


def test_the_unit_guard_fails_a_test_that_starts_ray_or_an_mlflow_server(tmp_path):
    port = free_port()
    store = tmp_path / "guard-store.db"
    code = f'''
import subprocess, sys


def test_plain():
    assert 1 + 1 == 2


def test_calls_ray_init():
    import ray
    ray.init(num_cpus=1, include_dashboard=False)


def test_starts_an_mlflow_server():
    # a real MLflow server, started and forgotten (the test does not wait for it to answer)
    subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", "sqlite:///{store}",
                      "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
'''
    proc = _run_pytest(tmp_path, TESTS / "unit" / "conftest.py", code)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "PASSED test_generated.py::test_plain" in out, out[-3000:]
    assert "FAILED test_generated.py::test_calls_ray_init" in out and "ray.init in a unit test" in out, out[-3000:]
    assert "ERROR test_generated.py::test_starts_an_mlflow_server" in out, out[-3000:]
    assert "it started mlflow server (pid" in out, out[-3000:]
    # the guard also stopped the server it found (and no Ray was started for the patched ray.init)
    deadline = time.time() + 10
    while _alive_with(str(store)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive_with(str(store))


def test_a_session_that_leaves_a_process_behind_fails(tmp_path):
    # Two forgotten processes: one carrying the session's mark, one without it (as a Ray agent whose
    # title overwrote its environment) that keeps a file open in the session's Ray folder.
    code = '''
import os, pathlib, subprocess, sys, time


def _forget(ready, name, **how):
    subprocess.Popen([sys.executable, "-c", f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(300)",
                      name], start_new_session=True, **how)
    deadline = time.time() + 60  # the test ends with the process running, as a forgetful test's would
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)


def test_forgets_a_process(tmp_path):
    _forget(tmp_path / "ready", "left-behind-by-a-test")


def test_forgets_an_unmarked_process_using_the_ray_folder(tmp_path):
    log = open(pathlib.Path(os.environ["RAY_TMPDIR"]) / "agent.log", "w")
    _forget(tmp_path / "ready", "unmarked-agent", env={}, stdout=log)
'''
    proc = _run_pytest(tmp_path, TESTS / "conftest.py", code)
    out = proc.stdout + proc.stderr
    # the tests themselves passed; the session failed, naming both leaks, and the processes are gone
    assert "PASSED test_generated.py::test_forgets_a_process" in out, out[-3000:]
    assert "PASSED test_generated.py::test_forgets_an_unmarked_process_using_the_ray_folder" in out, out[-3000:]
    assert proc.returncode == 1 and "left 2 process(es) of this session running" in out, out[-3000:]
    named = out.split("session running", 1)[1]
    assert "left-behind-by-a-test" in named and "unmarked-agent" in named, out[-3000:]  # which ones, by command
    assert not _alive_with("left-behind-by-a-test") and not _alive_with("unmarked-agent")
