"""Clusters: DDP across two real Ray nodes into an MLflow server (surviving a killed worker and an
MLflow outage), and `ray up` / `ray job submit` / `ray down` of cluster.local.yaml over SSH on
loopback. (The cluster files against Ray's own schema: tests/unit/test_cluster_files.py.)

Every process a test starts is stopped by that test, also when it fails (and conftest kills any
survivor carrying the session marker, failing the session).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from helpers.cli import EXPERIMENT, RAY, ROOT, SMALL, background_run, join_node, running_ray_head, steps
from helpers.processes import MARKER, alive, command_line, kill_pids, marked_pids, parent_pid, with_descendants
from helpers.servers import free_port, mlflow_server


# ---------------------------------------------------------------------------------------------
# a real two-node cluster
# ---------------------------------------------------------------------------------------------
def marked_processes(*needles: str) -> list[int]:
    """PIDs among the processes carrying this test session's marker whose command line holds a needle."""
    return [pid for pid in marked_pids() if any(n in " ".join(command_line(pid)) for n in needles)]


def test_ddp_across_two_nodes_survives_a_lost_node_and_an_mlflow_outage(tmp_path, monkeypatch):
    """Two Ray nodes (1 CPU each) joined on loopback; two DDP workers, one per node (STRICT_SPREAD);
    checkpoints in a shared storage folder; params, curves and artifacts in an MLflow server on
    loopback. Mid-run the server stops; while it is down the second node's raylet is killed, as a
    reclaimed spot node vanishes (its worker dies with it, and with a rank-0 worker there its
    buffered metrics); a new node joins, as the autoscaler would start one, and Ray Train restarts
    the worker group there from the latest checkpoint; then the server starts again. The run
    finishes and every epoch is in MLflow exactly once."""
    epochs, port, shared = 8, free_port(), tmp_path / "shared"
    # Ray Train's default poll (every 2 s; conftest shortens it): each epoch then lasts about 2 s, so
    # that training is still under way when the server stops and when the worker is killed.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")
    # The GCS declares the killed node dead after 3 failed health checks 1 s apart (Ray's default: 5
    # checks 3 s apart): what the test waits for is Ray Train's restart, not Ray's detection delay.
    monkeypatch.setenv("RAY_health_check_period_ms", "1000")
    monkeypatch.setenv("RAY_health_check_failure_threshold", "3")

    with running_ray_head(num_cpus=1) as address:
        with _train_through_a_lost_node_and_an_outage(tmp_path, address, port, epochs, shared) as (uri, driver):
            out, _ = driver.communicate(timeout=400)
            # Read back while the cluster's processes (the MLflow server among them) still run.
            assert driver.returncode == 0, out[-4000:]
            # the worker group Ray Train restarted says why it resumes (a user's --resume does not)
            assert "is unreachable" in out and "worker group restarted after a lost node or process: resuming from" in out, \
                out[-4000:]
            assert f"epoch {epochs}/{epochs}" in out and "img/s" in out and "left" in out
            # the first worker group, then the restarted one with rank 1 on the replacement node (nodes on
            # one machine share a log folder, so each node's log monitor may echo a line: count distinct lines)
            groups = set(re.findall(r"workers \(rank: ip/node\): .*", out))
            assert len(groups) == 2, out[-4000:]
            run_id, local = _check_every_epoch_once_in_mlflow(uri, epochs, shared, tmp_path)
    state = torch.load(local, weights_only=True)
    from attn.config import load_config
    from attn.data.base import DataSpec
    from attn.models import build_model

    model = build_model(load_config(EXPERIMENT).model, DataSpec(1, 28, 28, 10, tuple("0123456789")))
    model.load_state_dict(state)

    # The run folder on the shared storage keeps the resolved config and Ray Train's checkpoints.
    (run_dir,) = (shared / "runs" / "mnist_ram").iterdir()
    saved = json.loads((run_dir / "attn_run.json").read_text())
    assert saved["mlflow_run_id"] == run_id and saved["config"]["ray"]["num_workers"] == 2
    assert list(run_dir.glob("checkpoint_*/state.pt"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@contextlib.contextmanager
def _train_through_a_lost_node_and_an_outage(tmp_path: Path, address: str, port: int, epochs: int, shared: Path):
    """Starts an MLflow server on ``port``, joins a second node to the head at ``address`` and starts
    the two-worker run; once it has two checkpoints, stops the server, waits for an epoch to end while
    it is down, kills the second node, joins a replacement and starts the server again. Yields the
    server's URI and the run's driver, still running; on exit kills the driver if it has not ended
    and stops the server."""

    def checkpoints() -> set[str]:
        return {p.name for p in shared.glob("runs/mnist_ram/*/checkpoint_*")}

    server = mlflow_server(tmp_path / "mlflow", port=port)
    uri = server.__enter__()
    try:
        spot_port = free_port()
        join_node(address, 1, f"--node-manager-port={spot_port}")
        with background_run(
            tmp_path, str(EXPERIMENT), *SMALL, "data.train_subset=6000", f"train.epochs={epochs}",
            f"ray.address={address}", "ray.num_workers=2", "ray.cpus_per_worker=1",
            "ray.placement_strategy=STRICT_SPREAD", "ray.max_failures=1", f"ray.storage_path={shared / 'runs'}",
            f"tracking.tracking_uri={uri}",
        ) as driver:
            deadline = time.time() + 300
            while time.time() < deadline and len(checkpoints()) < 2:  # the first is surely registered
                time.sleep(0.1)
            server.__exit__(None, None, None)
            server = None
            seen = checkpoints()
            while time.time() < deadline and not checkpoints() - seen:
                time.sleep(0.1)  # an epoch ends while the server is down: its metrics are buffered
            workers = marked_processes("RayTrainWorker")
            assert len(workers) == 2, workers
            (raylet,) = marked_processes(f"--node_manager_port={spot_port}")
            kill_pids(with_descendants([raylet]))  # the node vanishes: its raylet, agents and workers
            join_node(address, 1)  # the replacement node
            time.sleep(3)
            server = mlflow_server(tmp_path / "mlflow", port=port)
            server.__enter__()
            yield uri, driver
    finally:
        if server is not None:
            server.__exit__(None, None, None)


def _check_every_epoch_once_in_mlflow(uri: str, epochs: int, shared: Path, tmp_path: Path) -> tuple[str, str]:
    """The two-node run as the MLflow server at ``uri`` holds it: finished, its two ranks on two nodes,
    its parameters, every epoch's metrics exactly once, its artifacts. Returns its id and the path of
    its best weights, downloaded into ``tmp_path``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_ram").experiment_id])
    assert run.info.status == "FINISHED"
    nodes = run.data.tags["ray.worker_nodes"].split(",")
    assert len(nodes) == 2 and nodes[0].split("/")[1] != nodes[1].split("/")[1]

    p = run.data.params
    assert p["model.num_glimpses"] == "6" and p["ray.num_workers"] == "2" and p["data.train_subset"] == "6000"
    assert p["ray.storage_path"] == str(shared / "runs") and p["tracking.tracking_uri"] == uri
    # Every epoch exactly once, whatever was re-run or lost in the buffer.
    for key in ("val_error", "train_loss", "lr", "best_val_error", "images_per_s", "train_accuracy",
                "val_nll", "train_nonfinite_steps"):
        assert sorted(steps(client, run.info.run_id, key)) == list(range(epochs)), key
    m = run.data.metrics
    assert m["test_error"] < 60.0  # chance is 90%: it learned something in 8 epochs on 6000 images
    assert {"test_error_mc", "test_error_sample", "best_val_error"} <= set(m)
    assert run.data.tags["core"] == "rnn" and run.data.tags.get("git_commit")

    arts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert arts == {"checkpoint/best_model.pt", "checkpoint/config.yaml"}
    conf = {a.path for a in client.list_artifacts(run.info.run_id, "config")}
    assert conf == {"config/config.resolved.yaml", "config/mnist_ram.yaml"}
    return run.info.run_id, client.download_artifacts(run.info.run_id, "checkpoint/best_model.pt", str(tmp_path))


# ---------------------------------------------------------------------------------------------
# ray up / job submit / ray down over SSH
# ---------------------------------------------------------------------------------------------
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def _pid_namespaces() -> bool:
    """Whether this machine lets the test start sshd in a PID namespace of its own (root and
    util-linux's unshare): the `ray stop` that `ray up` and `ray down` run on the node then sees, and
    stops, only the Ray that the test's cluster started, and nothing else on the machine."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30).returncode == 0


PID_NAMESPACES = _pid_namespaces()
# Without a namespace of its own, the node's `ray stop` would stop every other test's Ray: the test
# then waits for the phase that runs alone.
RAY_UP_PHASE = pytest.mark.e2e if PID_NAMESPACES else pytest.mark.alone


def _namespace_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _first_child(pid: int, timeout: float = 20) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        children = [p for p in with_descendants([pid]) if parent_pid(p) == pid]  # not a grandchild
        if children:
            return children[0]
        time.sleep(0.05)
    raise AssertionError(f"process {pid} started no child within {timeout} s")


@contextlib.contextmanager
def loopback_sshd(root: Path, home: Path, own_pid_namespace: bool = False):
    """sshd on a free loopback port that logs in with a key of its own and runs every command with
    HOME=``home`` (the remote account the cluster sees), carrying the test session's marker. Yields
    (port, private key, PID namespace): with ``own_pid_namespace`` sshd and all it starts live in a
    PID namespace of their own (the namespace's /proc/PID/ns/pid link, else None), which ends, with
    everything in it, when the server stops."""
    root.mkdir(parents=True)
    home.mkdir(parents=True)
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    port = free_port()
    wrapper = root / "login.sh"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"export HOME={home} ATTN_TEST_SESSION={MARKER}\n"
        'cd "$HOME"\n'
        'if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"; fi\n'
        "exec /bin/bash -l\n"
    )
    wrapper.chmod(0o755)
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'user_key.pub'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {root / 'sshd.pid'}\n"
        f"ForceCommand {wrapper}\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    command = [SSHD, "-D", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")]
    proc = subprocess.Popen([*UNSHARE, *command] if own_pid_namespace else command)
    try:
        namespace = _namespace_of(_first_child(proc.pid)) if own_pid_namespace else None
        deadline = time.time() + 20
        while True:
            assert proc.poll() is None, (root / "sshd.log").read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.time() < deadline, "sshd did not listen"
            time.sleep(0.1)
        yield port, root / "user_key", namespace
    finally:
        if own_pid_namespace:  # unshare ignores SIGTERM; its child, the namespace's init, ends it all
            kill_pids(with_descendants([proc.pid]))
        else:
            proc.terminate()
        proc.wait(timeout=20)


def _ray_daemons(keep) -> list[int]:
    """The machine's Ray daemons (raylet, gcs_server) whose pid ``keep`` accepts."""
    found = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in ("raylet", "gcs_server") \
                    and keep(int(entry.name)):
                found.append(int(entry.name))
    return found


def ray_processes(namespace: str | None = None) -> list[int]:
    """Ray's daemons in PID namespace ``namespace``, or (None) among the processes carrying this test
    session's marker."""
    if namespace is None:
        return marked_processes("raylet", "gcs_server")
    return _ray_daemons(lambda pid: _namespace_of(pid) == namespace)


def foreign_ray_daemons() -> list[int]:
    """Ray daemons on this machine that this test session did not start (a user's training, say). One
    that is ending is not counted: its environment, where the session's marker is, reads empty once it
    has let go of its memory (the two-node test's daemons, just stopped, were taken for a stranger's)."""
    mine = set(marked_pids())
    return _ray_daemons(lambda pid: pid not in mine and alive(pid) and Path(f"/proc/{pid}/environ").read_bytes())


@RAY_UP_PHASE
def test_ray_up_submit_and_down_on_a_local_cluster_over_ssh(tmp_path):
    if not Path(SSHD).exists():
        if os.environ.get("ATTN_REQUIRE_SSHD"):
            pytest.fail(f"{SSHD} is missing: .ci/run installs Debian's openssh-server")
        pytest.skip("needs sshd (apt-get install openssh-server); .ci/run installs it")
    # The cluster's node is this machine, and `ray up` / `ray down` run `ray stop` there, which stops
    # every Ray instance it can see: outside a PID namespace of its own, a training running beside the
    # tests would die with it.
    others = [] if PID_NAMESPACES else foreign_ray_daemons()
    if others:
        why = f"Ray runs on this machine outside the tests (pids {others}); ray up/down over loopback would stop it"
        if os.environ.get("ATTN_REQUIRE_SSHD"):
            pytest.fail(why)
        pytest.skip(why)

    home, client_home, shared = tmp_path / "node", tmp_path / "laptop", tmp_path / "shared"
    client_home.mkdir()
    # Every port the head listens on is a free one: Ray's fixed defaults (the dashboard agent's 52365,
    # the client server's 10001) may belong to another Ray of the machine.
    ray_port, dash_port, mlflow_port, agent_port, client_port = (free_port() for _ in range(5))
    with loopback_sshd(tmp_path / "sshd", home, own_pid_namespace=PID_NAMESPACES) as (ssh_port, key, namespace):
        cluster_file = _local_cluster_file(tmp_path, shared, key, ssh_port, mlflow_port, ray_port, dash_port,
                                           agent_port, client_port)
        env = {**os.environ, "HOME": str(client_home)}

        def ray(*args: str, timeout: int = 300, **extra_env: str) -> subprocess.CompletedProcess:
            proc = subprocess.run(
                [RAY, *args], cwd=ROOT, env={**env, **extra_env}, capture_output=True, text=True, timeout=timeout
            )
            assert proc.returncode == 0, f"ray {args[0]}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            return proc

        try:
            ray("up", "-y", "--no-config-cache", str(cluster_file))
            env_file = (home / ".attn" / "cluster.env").read_text()
            assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow_port}" in env_file
            token = ray("exec", str(cluster_file), 'cat "$RAY_AUTH_TOKEN_PATH"').stdout.strip().splitlines()[-1].strip()
            assert len(token) == 64 and (shared / ".ray" / "auth_token").stat().st_mode & 0o077 == 0

            # Token authentication is on: a submission without the token is refused.
            refused = subprocess.run(
                [RAY, "job", "list", "--address", f"http://127.0.0.1:{dash_port}"], cwd=ROOT,
                env={**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, capture_output=True, text=True,
                timeout=120,
            )
            assert refused.returncode != 0

            job = ray(
                "job", "submit", "--address", f"http://127.0.0.1:{dash_port}", "--working-dir", ".", "--",
                "python", "run.py", "experiments/mnist_ram.yaml", "data.train_subset=1000", "data.eval_subset=200",
                "eval.mc_samples=1", "train.epochs=1", "ray.cpus_per_worker=1",
                RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
            )
            assert "done: mnist-ram" in job.stdout, job.stdout[-3000:]

            creds = _check_the_head_server_asks_for_credentials(shared, env_file, mlflow_port)
            os.environ.update(creds)
            _check_the_run_reached_the_head(mlflow_port, shared)

            ray("down", "-y", str(cluster_file))
            deadline = time.time() + 30
            while ray_processes(namespace) and time.time() < deadline:
                time.sleep(0.5)
            assert not ray_processes(namespace), "ray down left Ray running"
        finally:
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(key, None)
            subprocess.run([RAY, "down", "-y", str(cluster_file)], cwd=ROOT, env=env, capture_output=True, timeout=120)
            if namespace is None:  # else the server ends with its namespace (its pid file holds a pid of there)
                subprocess.run(
                    ["bash", str(ROOT / "scripts" / "cluster" / "node.sh"), "stop-mlflow"],
                    env={**os.environ, "HOME": str(home)}, capture_output=True, timeout=60,
                )


def _local_cluster_file(tmp_path: Path, shared: Path, key: Path, ssh_port: int, mlflow_port: int, ray_port: int,
                        dash_port: int, agent_port: int, client_port: int) -> Path:
    """cluster.local.yaml as a user fills it in for this one machine, reached over the loopback sshd
    at ``ssh_port`` with ``key``; every port the head listens on is one of the given free ones. The
    node already has attn's environment (this one), so setup uses --python instead of building
    ~/attn-venv. Written to tmp_path/cluster.yaml."""
    config = yaml.safe_load((ROOT / "cluster.local.yaml").read_text())
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config.update(min_workers=0, max_workers=0)
    config["auth"] = {
        "ssh_user": os.environ.get("USER") or "root",
        "ssh_private_key": str(key),
        "ssh_proxy_command": f"{sys.executable} {ROOT / 'tests' / 'helpers' / 'tcp_relay.py'} 127.0.0.1 {ssh_port}",
    }
    config["setup_commands"] = [
        c.replace("--shared /mnt/shared/attn", f"--shared {shared} --python {sys.executable}")
        for c in config["setup_commands"]
    ]
    config["head_start_ray_commands"] = [
        c.replace("node.sh head --port 5000", f"node.sh head --ip 127.0.0.1 --port {mlflow_port}")
        .replace("--port=6379", f"--port={ray_port}")
        .replace("--dashboard-port=8265", f"--dashboard-port={dash_port} --dashboard-agent-listen-port={agent_port} "
                                          f"--ray-client-server-port={client_port}")
        for c in config["head_start_ray_commands"]
    ]
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(config))
    return cluster_file


def _check_the_head_server_asks_for_credentials(shared: Path, env_file: str, mlflow_port: int) -> dict[str, str]:
    """The head's MLflow server refuses requests without the cluster's credentials, which node.sh made
    into the shared folder (mode 600) and every node's cluster.env (``env_file``) reads. Returns them
    (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)."""
    search = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(search, timeout=30)
    credentials = shared / ".mlflow" / "credentials"
    assert credentials.stat().st_mode & 0o077 == 0 and (shared / ".mlflow").stat().st_mode & 0o077 == 0
    assert str(credentials) in env_file
    creds = dict(re.findall(r"export (MLFLOW_TRACKING_\w+)=(\S+)", credentials.read_text()))
    assert set(creds) == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert len(creds["MLFLOW_TRACKING_PASSWORD"]) >= 32 and not credentials.is_relative_to(ROOT)
    return creds


def _check_the_run_reached_the_head(mlflow_port: int, shared: Path) -> None:
    """The submitted run went to the head's MLflow server (credentials in the environment) and its
    folder to the shared storage."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{mlflow_port}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist_ram").experiment_id])
    assert run.info.status == "FINISHED" and "test_error" in run.data.metrics
    assert run.data.params["ray.storage_path"] == str(shared / "runs")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} >= {"checkpoint/best_model.pt"}
    (run_dir,) = (shared / "runs" / "mnist_ram").iterdir()
    assert list(run_dir.glob("checkpoint_*/state.pt"))
    assert (shared / "mlartifacts").is_dir() and (shared / "mlflow" / "mlflow.db").is_file()
