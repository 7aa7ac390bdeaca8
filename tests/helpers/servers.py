"""Real servers on loopback for the tests: a free port, an MLflow tracking server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def mlflow_server(root: Path, port: int | None = None, auth: tuple[str, str] | None = None):
    """A real MLflow tracking server on loopback (SQLite store, proxied artifacts); yields its URI.
    ``auth`` (user, password): MLflow's basic-auth app, with that admin user, as node.sh starts it."""
    port = port or free_port()
    # as scripts/cluster/node.sh starts it: without MLflow's job runner and its Huey consumers, which
    # attn does not use and which cost seconds of CPU at every start
    env, app = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, []
    if auth is not None:
        root.mkdir(parents=True, exist_ok=True)
        ini = root / "auth.ini"
        ini.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{root / 'auth.db'}\n"
                       f"admin_username = {auth[0]}\nadmin_password = {auth[1]}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_FLASK_SERVER_SECRET_KEY="test-session-secret")
        app = ["--app-name", "basic-auth"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *app, "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
