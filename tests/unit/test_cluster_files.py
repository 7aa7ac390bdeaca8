"""The cluster files against Ray's own schema and validator, and the node script's refusals (no
cluster is started: the clusters themselves are in tests/e2e/test_cluster.py)."""

from __future__ import annotations

import copy
import os
import subprocess

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
        (["setup", "--shared", str(tmp_path / "s"), "--python", "/bin/false"], "cannot import attn and ray"),
        (["head"], "run 'node.sh setup --shared DIR' on this node first"),
        (["launch"], "usage: node.sh"),
    ]:
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2 and needle in proc.stderr, (args, proc.stderr)


