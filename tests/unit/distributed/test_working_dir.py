"""What `ray job submit --working-dir .` uploads from a project folder a user has worked in: the code
and experiments, never the datasets, models, runs, MLflow stores or fetched pictures next to them.
Ray's own packaging walk (the one the job submission runs, honouring .gitignore) reads the project's
real .gitignore; the cluster files' rsync reads the same file (rsync_filter)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from ray._private.runtime_env.packaging import _dir_travel

from helpers.cli import ROOT

MADE_BY_USERS = ["data/svhn/train/1.png", "models/best_model.pt", "show-mnist-ram-rnn-g6/summary.md",
                 "runs/mnist_ram/r1/checkpoint_000/state.pt", "mlflow.db", "mlartifacts/1/a/model.pt",
                 "mlruns/0/meta.yaml", "data/svhn/test.tar.gz.part"]
PROJECT = ["attn/cli.py", "experiments/mnist_ram.yaml", "run.py", "cluster.yaml", "README.md"]


def test_a_working_dir_upload_skips_what_users_made(tmp_path):
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    for name in MADE_BY_USERS + PROJECT:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    seen: list[str] = []
    _dir_travel(tmp_path, [], lambda p: seen.append(p.relative_to(tmp_path).as_posix()) if p.is_file() else None,
                include_gitignore=True)
    assert sorted(seen) == sorted(PROJECT + [".gitignore"])


def test_the_cluster_files_rsync_through_the_same_gitignore():
    for name in ("cluster.yaml", "cluster.local.yaml"):
        assert ".gitignore" in yaml.safe_load((ROOT / name).read_text())["rsync_filter"], name
