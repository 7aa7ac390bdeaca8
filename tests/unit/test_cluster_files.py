"""The cluster files against Ray's own schema and validator, and the node script's refusals (no
cluster is started: the clusters themselves are in tests/e2e/test_cluster.py)."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from helpers.cli import ROOT

CLUSTER_FILES = ["cluster.yaml", "cluster.local.yaml"]


# ---------------------------------------------------------------------------------------------
# cluster files
# ---------------------------------------------------------------------------------------------
def validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_files_pass_rays_schema(name):
    text = (ROOT / name).read_text()
    config = validate(yaml.safe_load(text))
    # Secure by default: the dashboard / Jobs API only on the head's localhost, token auth on the
    # nodes, no credentials in the file, the tracking server started on the head.
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "node.sh head" in head
    assert "node.sh setup --shared" in " ".join(config["setup_commands"])
    assert not any(word in text.lower() for word in ("aws_access_key", "aws_secret", "password", "auth_token:"))
    assert ".venv" in config["rsync_exclude"] and config["file_mounts"] == {"~/attn": "."}
    if config["provider"]["type"] == "aws":
        # Only SSH is open to the outside: Ray's default rules, no extra inbound permissions.
        assert "IpPermissions" not in config["provider"]["security_group"]
        workers = config["available_node_types"]["gpu_worker"]
        assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
        assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize(
    "edit,error,match",
    [
        # misspelt key: the schema allows no other keys
        (lambda c: c.update(head_start_ray_command=c.pop("head_start_ray_commands")), jsonschema.ValidationError,
         r"Additional properties are not allowed \('head_start_ray_command' was unexpected\)"),
        # no provider type: Ray's config preparation cannot pick a node provider
        (lambda c: c["provider"].pop("type"), KeyError, "'type'"),
        (lambda c: c.update(idle_timeout_minutes="soon"), jsonschema.ValidationError, "'soon' is not of type 'number'"),
    ],
    ids=["misspelt-key", "no-provider-type", "timeout-not-a-number"],
)
def test_rays_validator_rejects_broken_cluster_files(edit, error, match):
    for name in CLUSTER_FILES:
        config = yaml.safe_load((ROOT / name).read_text())
        validate(copy.deepcopy(config))  # the file as shipped passes: the edit alone is refused
        edit(config)
        with pytest.raises(error, match=match):
            validate(config)


def test_node_script_refuses_bad_use(tmp_path):
    script = ROOT / "scripts" / "cluster" / "node.sh"
    env = {**os.environ, "HOME": str(tmp_path)}
    for args, needle in [
        (["setup"], "--shared DIR is required"),
        (["setup", "--shared", str(tmp_path / "s"), "--bogus", "1"], "unknown option '--bogus'"),
        (["setup", "--shared", str(tmp_path / "s"), "--python", "/bin/false"], "/bin/false does not run"),
        (["head"], "run 'node.sh setup --shared DIR' on this node first"),
        (["launch"], "usage: node.sh"),
    ]:
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)




def _fake(folder, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.mark.parametrize("python,gpu,driver,needle", [
    ("3.6", None, None, "is Python 3.6; attn needs Python 3.10 to 3.12"),
    ("3.13", None, None, "is Python 3.13; attn needs Python 3.10 to 3.12"),
    ("3.12", "NVIDIA Corporation GA102GL [A10G] (rev a1)", None,
     "has an NVIDIA GPU (NVIDIA Corporation GA102GL [A10G] (rev a1)) but no driver (no nvidia-smi)"),
    ("3.12", "NVIDIA Corporation GA102GL [A10G] (rev a1)", "470.82.01",
     "the NVIDIA driver on"),
    # the checks pass: the node reaches the next step (this fake Python has no attn)
    ("3.12", "NVIDIA Corporation GA102GL [A10G] (rev a1)", "595.91.07", "cannot import attn and ray"),
    ("3.10", None, None, "cannot import attn and ray"),
])
def test_node_setup_refuses_an_unsupported_python_or_gpu_driver(tmp_path, python, gpu, driver, needle):
    """What a node boots with, faked on PATH: python's version, lspci's NVIDIA line, nvidia-smi's driver."""
    fake = tmp_path / "bin"
    fake.mkdir()
    _fake(fake, "python", f'case "$*" in *version_info*) echo {python} ;; *) exit 1 ;; esac')
    if gpu:
        _fake(fake, "lspci", f'echo "00:1e.0 3D controller: {gpu}"')
    if driver:
        _fake(fake, "nvidia-smi", f"echo {driver}")
    path = ":".join([str(fake)] + [p for p in os.environ["PATH"].split(":") if not (Path(p) / "nvidia-smi").exists()])
    env = {**os.environ, "HOME": str(tmp_path), "PATH": path}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "cluster" / "node.sh"), "setup", "--shared",
                           str(tmp_path / "shared"), "--python", str(fake / "python")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    if driver == "470.82.01":
        assert "is 470.82.01; the torch wheels of constraints.txt (CUDA 13.0) need 580 or newer" in lines[0]


def test_the_pins_are_the_versions_the_suite_runs_with():
    """make install and node.sh setup install constraints.txt: it must hold what this suite tested."""
    from importlib.metadata import version

    pins = [line.split("==") for line in (ROOT / "scripts" / "cluster" / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins and all(len(p) == 2 for p in pins)
    stale = {name: (pinned, version(name)) for name, pinned in pins if version(name) != pinned}
    assert not stale, f"constraints.txt pins other versions than the installed ones: {stale}"
    assert "-c $(CONSTRAINTS)" in (ROOT / "Makefile").read_text()
    assert '-c "$here/constraints.txt"' in (ROOT / "scripts" / "cluster" / "node.sh").read_text()


def test_cluster_images_are_ones_that_boot_a_supported_python():
    """Ray's latest_dlami is an Ubuntu 18.04 image (Python 3.6); the nodes name a current one."""
    for node in yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"].values():
        image = node["node_config"]["ImageId"]
        assert image.lower() != "latest_dlami" and image.startswith(("ami-", "resolve:ssm:/aws/service/deeplearning/"))
