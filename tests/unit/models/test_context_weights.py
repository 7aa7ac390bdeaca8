"""The vit context's weights folder is checked before anything trains: `python run.py` stops in one
line (its Ray-trained runs: tests/e2e/test_contexts_training.py)."""

from __future__ import annotations

import pytest

from helpers.cli import ROOT, mlflow_client, run_cli
from helpers.svhn_fixture import make_svhn_dataset


@pytest.fixture(scope="module")
def multinumber(tmp_path_factory):
    from attn.data.multinumber import generate_multinumber

    svhn = make_svhn_dataset(tmp_path_factory.mktemp("svhn_vit"), n_train=80, n_test=24, seed=4)
    out = tmp_path_factory.mktemp("mn") / "multinumber"
    generate_multinumber(svhn, out, size=96, box=32, count=60, split=(0.6, 0.2, 0.2), workers=1, progress=False)
    return out


def test_a_missing_vit_folder_stops_before_training_in_one_line(tmp_path, multinumber):
    proc = run_cli(tmp_path, str(ROOT / "experiments" / "multinumber.yaml"), f"data.data_dir={multinumber}",
                   f"data.cache_dir={tmp_path / 'cache'}", "ray.gpus_per_worker=0", timeout=120)
    assert proc.returncode == 2
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "models/vit-b16: model.context.weights for vit must be a folder" in last, (
        proc.stderr[-2000:]
    )
    # Nothing was recorded: no store, or one holding only MLflow's own Default experiment.
    assert not (tmp_path / "mlflow.db").exists() or [e.name for e in mlflow_client(tmp_path).search_experiments()] == [
        "Default"
    ]
