"""SVHN without Ray: a missing or partial SVHN folder stops `python run.py` before anything opens, in
one line; the shipped SVHN experiment files (shrunk in width) train and test one epoch in process
through the one loop with every Transformer core. (DRAM trained through Ray Train and MLflow:
tests/e2e/test_svhn_training.py.)"""

from __future__ import annotations

import pytest

from helpers.cli import ROOT, run_cli
from helpers.reporters import FolderReporter
from helpers.svhn_fixture import make_svhn_folder


@pytest.mark.parametrize("layout", ["none", "no_test", "partial"])
def test_missing_or_partial_svhn_stops_training_with_one_line(tmp_path, layout):
    data = tmp_path / "data" / "svhn"  # the experiment's default data.data_dir, relative to the cwd
    if layout != "none":
        make_svhn_folder(data, "train", 6, seed=0)
    if layout == "partial":
        make_svhn_folder(data, "test", 6, seed=1)
        (data / "test" / "4.png").unlink()
    proc = run_cli(tmp_path, str(ROOT / "experiments" / "svhn_dram.yaml"), "data.use_extra=false", timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    want = {
        "none": ["data/svhn", "data.data_dir does not exist", "python run.py prepare svhn --to DIR"],
        "no_test": ["test", "folder not found", "python run.py prepare svhn --to DIR"],
        "partial": ["1 of 6 PNGs named in digitStruct.mat are missing", "'4.png'"],
    }[layout]
    for needle in want:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "mlflow.db").exists()  # nothing was opened before the data was checked


@pytest.mark.parametrize("experiment,core", [("svhn_gtrxl", "gtrxl"), ("svhn_dram", "gpt2"), ("svhn_dram", "trxl")])
def test_shipped_experiments_run_one_epoch_with_every_transformer_core(tmp_path, experiment, core):
    """The experiment files as shipped (shrunk in width only) train and test through the one loop."""
    from attn.config import load_config
    from attn.engine.trainer import NullTracker, WorkerInfo, fit

    data = tmp_path / "svhn"
    make_svhn_folder(data, "train", 40, seed=0)
    make_svhn_folder(data, "test", 12, seed=1)
    overrides = [f"data.data_dir={data}", "data.use_extra=false", "model.hidden_size=32", "model.conv_channels=[4,4,8]",
                 "train.epochs=1", "train.batch_size=16", "eval.mc_samples=2", "model.explore_steps=1"]
    if experiment == "svhn_dram":
        overrides.append(f"model.core.kind={core}")
    else:
        overrides.append("model.core.inner_size=32")
    cfg = load_config(ROOT / "experiments" / f"{experiment}.yaml", overrides)

    reporter, lines = FolderReporter(), []
    final = fit(cfg, WorkerInfo(), reporter, NullTracker(), log=lines.append)
    assert cfg.model.core.kind == core and f"dram/{core} on svhn" in lines[0]
    assert 0.0 <= final["test_error_mc"] <= 100.0 and 0.0 <= final["test_digit_accuracy"] <= 1.0
    assert {"val_token_accuracy", "train_glimpses_per_image"} <= set(reporter.reports[0])
