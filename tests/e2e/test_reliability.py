"""Reliability with real servers and trainings: a flaky MLflow server (stopped and started again under
a live tracker), a full disk under a training run."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time

import pytest

from helpers.browser import headless_chromium
from helpers.cli import EXPERIMENT, ray_with_cpus, run_cli
from helpers.servers import free_port, mlflow_server


def test_tracker_buffers_while_the_server_is_down_and_delivers_once_it_is_back(tmp_path):
    """A real MLflow server on loopback, stopped mid-run and started again on the same port and store."""
    from mlflow.tracking import MlflowClient

    from attn.errors import TrackingError
    from attn.tracking import MlflowTracker, ensure_experiment

    port = free_port()
    lines: list[str] = []
    with mlflow_server(tmp_path / "mlflow", port=port) as uri:
        exp = ensure_experiment(uri, "flaky")
        run_id = MlflowClient(uri).create_run(exp).info.run_id
        tracker = MlflowTracker(uri, run_id, retry_timeout_s=60, log=lines.append)
        tracker.log_metrics({"val_error": 50.0}, step=0)
    # Server down: writes are buffered (an artifact as a copy: the caller deletes its file).
    art = tmp_path / "best_model.pt"
    art.write_text("weights")
    t0 = time.time()
    tracker.log_metrics({"val_error": 40.0}, step=1)
    tracker.log_artifact(str(art), "checkpoint")
    tracker.log_metrics({"val_error": 30.0}, step=2)
    assert time.time() - t0 < 10, "training must not wait on MLflow"
    art.unlink()
    assert any("unreachable" in line for line in lines)
    with mlflow_server(tmp_path / "mlflow", port=port) as uri:
        tracker.close()
        client = MlflowClient(uri)
        assert [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "val_error"), key=lambda m: m.step)] == [
            (0, 50.0), (1, 40.0), (2, 30.0)
        ]
        assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/best_model.pt"]
        assert any("is back" in line for line in lines)

        # A restarted worker group: its checkpoint's history has an epoch the run never got (3), and
        # it re-runs an epoch the run holds (2): each epoch ends up there exactly once.
        again = MlflowTracker(uri, run_id, retry_timeout_s=60, log=lines.append)
        again.sync([{"epoch": float(e), "val_error": v} for e, v in enumerate([50.0, 40.0, 30.0, 25.0])])
        again.log_metrics({"epoch": 2, "val_error": 30.0}, step=2)
        again.log_metrics({"epoch": 4, "val_error": 20.0}, step=4)
        again.log_metrics({"test_error": 21.0}, step=4)  # final metrics at the last epoch's step are kept
        again.close()
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_error"))
        assert history == [(0, 50.0), (1, 40.0), (2, 30.0), (3, 25.0), (4, 20.0)]
        assert [m.value for m in client.get_metric_history(run_id, "test_error")] == [21.0]

    # Gone for longer than retry_timeout_s: one clear error, not a hang.
    tracker = MlflowTracker(uri, run_id, retry_timeout_s=2, log=lines.append)
    tracker.log_metrics({"val_error": 20.0}, step=3)
    with pytest.raises(TrackingError, match="stayed unreachable for 2 s: 1 write"):
        tracker.close()


def test_a_full_disk_fails_the_run_in_one_line_and_keeps_its_checkpoint(tmp_path):
    """The storage folder on a 6 MB tmpfs: the first checkpoint fits, a later one does not. The run
    fails with one line (naming the cause and --resume), marked FAILED in MLflow, and the checkpoint
    that was written stays loadable."""
    from mlflow.tracking import MlflowClient

    from attn.engine.checkpoint import load_checkpoint

    disk = tmp_path / "small-disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proc = run_cli(tmp_path, str(EXPERIMENT), "data.train_subset=1000", "data.eval_subset=200", "eval.mc_samples=1",
                       "train.epochs=4", f"ray.storage_path={disk}", env=ray_with_cpus(2))
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert lines[-1].startswith("error: run ") and "No space left on device" in lines[-1], lines[-1]
        assert "--resume" in lines[-1]
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("mnist_ram").experiment_id])
        assert run.info.status == "FAILED"
        kept = [d for d in disk.glob("mnist_ram/*/checkpoint_*") if (d / "state.pt").is_file()]
        assert kept
        state, _ = load_checkpoint(sorted(kept)[0])
        assert state["epoch"] >= 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_an_mlflow_server_with_authentication_refuses_strangers_and_takes_a_run_with_credentials(tmp_path):
    """MLflow's basic-auth app, as node.sh starts it on a cluster: run.py without credentials or with a
    wrong password stops in one line before Ray starts; with the credentials in the environment (how a
    cluster hands them to every process) the run trains and its workers log into the server."""
    from mlflow.tracking import MlflowClient

    password = "s3cret-" + "7" * 20
    with mlflow_server(tmp_path / "server", auth=("attn", password)) as uri:
        base = {k: v for k, v in ray_with_cpus(2).items() if not k.startswith("MLFLOW_TRACKING_")}
        args = [str(EXPERIMENT), "data.train_subset=500", "data.eval_subset=100", "eval.mc_samples=1",
                "eval.viz_images=0", "train.epochs=1", f"tracking.tracking_uri={uri}"]
        for extra, needle in (({}, "needs credentials (HTTP 401)"),
                              ({"MLFLOW_TRACKING_USERNAME": "attn", "MLFLOW_TRACKING_PASSWORD": "guess"},
                               "refused the credentials of user 'attn' (HTTP 401)")):
            proc = run_cli(tmp_path, *args, env={**base, **extra})
            lines = [line for line in proc.stderr.splitlines() if line.strip()]
            assert proc.returncode != 0 and lines[-1].startswith("error: ") and needle in lines[-1], proc.stderr[-2000:]
            assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()  # nothing started
        creds = {"MLFLOW_TRACKING_USERNAME": "attn", "MLFLOW_TRACKING_PASSWORD": password}
        proc = run_cli(tmp_path, *args, env={**base, **creds})
        assert proc.returncode == 0, proc.stderr[-3000:]
        os.environ.update(creds)
        try:
            client = MlflowClient(tracking_uri=uri)
            (run,) = client.search_runs([client.get_experiment_by_name("mnist_ram").experiment_id])
        finally:
            for key in creds:
                os.environ.pop(key, None)
        assert run.info.status == "FINISHED" and "test_error" in run.data.metrics and "val_error" in run.data.metrics


def test_the_mlflow_ui_behind_authentication_opens_only_with_credentials_in_a_browser(tmp_path, monkeypatch):
    """The cluster's MLflow UI in headless Chromium: without credentials the page stays empty (the server
    answers 401 and asks for a login); with them (HTTP basic auth, what the browser's login dialog
    sends) the run's page opens."""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    credentials = ("attn", "s3cret-" + "7" * 20)
    with mlflow_server(tmp_path / "server", auth=credentials) as uri, \
            headless_chromium(tmp_path / "chromium-profile") as browser:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", credentials[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials[1])
        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment("behind-auth"), run_name="the-guarded-run")
        client.set_terminated(run.info.run_id)
        link = f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
        browser.get(link)  # the server answers 401 and asks for a login, which nobody gives: an empty page
        assert browser.find_element(By.TAG_NAME, "body").text.strip() == "", browser.page_source[:500]
        assert run.info.run_name not in browser.page_source and "mlflow" not in browser.page_source.lower()
        token = base64.b64encode(":".join(credentials).encode()).decode()
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        browser.get(link)
        WebDriverWait(browser, 60).until(
            EC.visibility_of_element_located((By.XPATH, f"//*[normalize-space(text())='{run.info.run_name}']")))
